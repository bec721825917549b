"""Reading answers from their bytes (``dnswire``) gives what dnspython's full
message parser gives: checked against it on random responses, and on
broken bytes it reports an error instead of raising."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_host.check import wire as dnswire
from policy_host.check.dnsclient import (
    ANSWERED,
    ERROR,
    LOOP,
    MAX_CHAIN,
    NODATA,
    NXDOMAIN,
    OK,
    DnsAnswer,
    interpret,
    text_of,
)

LABELS = st.sampled_from(["a", "B", "mta-sts", "_mta-sts", "Example", "x1", "provider"])
NAMES = st.lists(LABELS, min_size=1, max_size=4).map(lambda labels: ".".join(labels) + ".")
VALUES = {
    "A": st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7"]),
    "TXT": st.sampled_from(['"v=STSv1; id=1;"', '"v=TLSRPTv1; rua=mailto:a@b"', '"x" "y"']),
    "MX": st.builds(lambda p, n: f"{p} {n}", st.integers(0, 20), NAMES),
    "CNAME": NAMES,
    "CAA": st.sampled_from(['0 issue "letsencrypt.org"', '128 issue ";"', '0 iodef "mailto:a@b"']),
}
RCODES = st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL])


@st.composite
def responses(draw: st.DrawFn) -> tuple[str, str, dns.message.Message]:
    qname = draw(NAMES)
    rdtype = draw(st.sampled_from(sorted(VALUES)))
    message = dns.message.make_response(
        dns.message.make_query(qname, rdtype, use_edns=0, payload=1232)
    )
    message.set_rcode(draw(RCODES))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(sorted(VALUES)))
        owner = draw(st.one_of(st.just(qname), NAMES))
        value = draw(VALUES[kind])
        message.answer.append(dns.rrset.from_text(owner, 300, "IN", kind, value))
    return qname.rstrip("."), rdtype, message


def oracle(name: str, rdtype: str, message: dns.message.Message) -> DnsAnswer:
    """The same reading, done on dnspython's parsed message."""
    parsed = dns.message.from_wire(message.to_wire())
    rcode = parsed.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return DnsAnswer(name, rdtype, "other")
    wanted = dns.rdatatype.from_text(rdtype)

    def rrset(owner: dns.name.Name, kind: dns.rdatatype.RdataType) -> list[str]:
        return sorted(
            {str(r) for s in parsed.answer if s.name == owner and s.rdtype == kind for r in s}
        )

    current = dns.name.from_text(name)
    seen = {current}
    chain: list[str] = []
    while True:
        found = rrset(current, wanted)
        if found:
            return DnsAnswer(name, rdtype, OK, tuple(chain), tuple(found))  # type: ignore[arg-type]
        cnames = rrset(current, dns.rdatatype.CNAME)
        if wanted == dns.rdatatype.CNAME or not cnames:
            break
        # dnspython keeps one CNAME per name (the last), as we do.
        target = dns.name.from_text(cnames[0])
        chain.append(text_of(target))
        if target in seen or len(chain) > MAX_CHAIN:
            return DnsAnswer(name, rdtype, LOOP, tuple(chain))
        seen.add(target)
        current = target
    status = NXDOMAIN if rcode == dns.rcode.NXDOMAIN else NODATA
    return DnsAnswer(name, rdtype, status, tuple(chain))


@settings(max_examples=400, deadline=None)
@given(responses())
def test_the_reading_matches_dnspythons(case: tuple[str, str, dns.message.Message]) -> None:
    name, rdtype, message = case
    ours = interpret(name, rdtype, message.to_wire())
    expected = oracle(name, rdtype, message)
    if expected.status == "other":
        assert ours.status not in ANSWERED
        return
    assert (ours.status, ours.chain) == (expected.status, expected.chain)
    assert tuple(str(r) for r in ours.records) == expected.records


@settings(max_examples=300, deadline=None)
@given(responses(), st.data())
def test_broken_bytes_are_an_error_never_an_exception(
    case: tuple[str, str, dns.message.Message], data: st.DataObject
) -> None:
    name, rdtype, message = case
    wire = bytearray(message.to_wire())
    if data.draw(st.booleans()):
        wire = wire[: data.draw(st.integers(0, len(wire)))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    answer = interpret(name, rdtype, bytes(wire))
    assert isinstance(answer, DnsAnswer)
    if answer.status == ERROR:
        assert answer.detail


def header(answers: int = 1) -> bytes:
    return b"\x12\x34\x81\x80\x00\x00" + answers.to_bytes(2, "big") + b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (header() + b"\xc0\x0c" + b"\x00" * 10, "does not point back"),  # points at itself
        (header() + b"\x01a\xc0\x0e" + b"\x00" * 10, "does not point back"),  # forward
        (header() + b"\x01a\x80" + b"\x00" * 10, "unknown label type"),
        (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00" + b"\x00" * 10, "longer than 255"),
        (header() + b"\x05ab", "past the end"),
        (header() + b"\x01a\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x09ab", "past the end"),
        (b"\x12\x34\x81", "shorter than a DNS header"),
    ],
)
def test_malformed_names_and_records_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(dnswire.WireError, match=message):
        dnswire.read_response(wire)


def test_the_extended_response_code_in_the_opt_record_counts() -> None:
    query = dns.message.make_query("a.example", "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.BADVERS)  # 16: 0 in the header, 1 in the OPT record
    assert dnswire.read_response(reply.to_wire()).rcode == dns.rcode.BADVERS
    answer = interpret("a.example", "A", reply.to_wire())
    assert (answer.status, answer.detail) == (ERROR, "the resolver answered BADVERS")


def test_compressed_names_and_case_are_read_as_one_name() -> None:
    reply = dns.message.make_response(dns.message.make_query("Mta-Sts.A.Example", "A"))
    reply.answer.append(
        dns.rrset.from_text("mta-sts.a.example.", 0, "IN", "CNAME", "MTA-STS.provider.example.")
    )
    reply.answer.append(dns.rrset.from_text("mta-sts.PROVIDER.example.", 0, "IN", "A", "192.0.2.1"))
    answer = interpret("mta-sts.a.example", "A", reply.to_wire())
    assert (answer.status, answer.chain) == (OK, ("mta-sts.provider.example",))
    assert [str(r) for r in answer.records] == ["192.0.2.1"]
    assert dnswire.name_key(dns.name.from_text("A.b")) == b"\x01a\x01b"
