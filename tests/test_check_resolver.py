"""When the resolver misbehaves, every tenant still gets a report: timeouts,
truncated answers, SERVFAIL, CNAME loops become reasons, never crashes.

Misbehaving resolvers are tiny UDP servers made here (a real unbound does not
misbehave on request); the answers they send are built with dnspython.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from support.dnsservers import Zone, start_dns
from support.fixtures_dns import require_dns_binaries

from policy_host.check.checks import check_all
from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import (
    CHANNELS,
    LOOP,
    NODATA,
    NXDOMAIN,
    OK,
    SERVFAIL,
    TIMEOUT,
    DnsClient,
    interpret,
)
from policy_host.check.reasons import TenantReport
from policy_host.check.udp import EDNS_PAYLOAD, matches, query_wire, question_wire
from policy_host.model import Policy, Tenant
from policy_host.read.config import ProviderConfig, load_config

Responder = Callable[[dns.message.Message], dns.message.Message | list[dns.message.Message] | None]

CONFIG = """\
tenants_dir: tenants
policy_host: mta-sts.provider.example
id_zone: _mta-sts.provider.example
"""


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "config.yaml").write_text(CONFIG)
    return load_config(tmp_path / "config.yaml")


class FakeResolver:
    """A UDP "resolver" on 127.0.0.1 answering with ``respond`` (None: silence)."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.queries = 0
        self.peers: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            self.peers.add(peer)
            answer = self.respond(dns.message.from_wire(data))
            if answer is None:
                continue
            for message in answer if isinstance(answer, list) else [answer]:
                self.sock.sendto(message.to_wire(), peer)

    def __enter__(self) -> FakeResolver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def tenant(domain: str = "customer.example", mode: str = "enforce") -> Tenant:
    return Tenant(domain, Policy(mode, (f"mx1.{domain}",), 604800), source="test")


def check(
    config: ProviderConfig, port: int, *tenants: Tenant, timeout: float = 2.0
) -> list[TenantReport]:
    client = DnsClient([("127.0.0.1", port)], timeout=timeout, concurrency=8)
    ctx = CheckContext(config=config, lookup=client, expected_ids={})
    return asyncio.run(check_all(ctx, tenants, workers=4))


def subjects(report: TenantReport) -> list[tuple[str, str, str]]:
    return [(r.code, r.label, r.subject) for r in report.reasons]


def test_a_silent_resolver_gives_timeouts_not_a_crash(config: ProviderConfig) -> None:
    with FakeResolver(lambda query: None) as silent:
        (report,) = check(config, silent.port, tenant(), timeout=0.6)
    d = "customer.example"
    assert subjects(report) == [
        ("dns_timeout", "fail", f"mta-sts.{d}"),
        ("dns_timeout", "fail", f"_mta-sts.{d}"),
        ("dns_timeout", "fail", d),
        ("dns_timeout", "warn", f"_smtp._tls.{d}"),
    ]
    assert report.status == "fail"
    assert "no answer within 0.6 s" in report.reasons[0].message


def test_truncated_answers_without_tcp_are_a_reason(config: ProviderConfig) -> None:
    def truncated(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.TC
        return response

    # Nothing listens on TCP at that port, so the retry over TCP fails.
    with FakeResolver(truncated) as server:
        (report,) = check(config, server.port, tenant("trunc.example", mode="testing"))
    assert {r.code for r in report.reasons} == {"dns_truncated"}
    assert [r.label for r in report.reasons] == ["fail", "fail", "warn", "warn"]
    assert "truncated and the retry over TCP failed" in report.reasons[0].message


def test_servfail_for_everything_is_a_reason(config: ProviderConfig) -> None:
    def servfail(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response

    with FakeResolver(servfail) as server:
        reports = check(config, server.port, tenant("a.example"), tenant("b.example"))
    assert [r.domain for r in reports] == ["a.example", "b.example"]
    for report in reports:
        assert {r.code for r in report.reasons} == {"dns_servfail"}
        assert report.status == "fail"


def test_a_resolver_returning_a_cname_loop_itself(config: ProviderConfig) -> None:
    """Some resolvers answer NOERROR with the looping chain instead of SERVFAIL."""

    def looping(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        name = query.question[0].name.to_text()
        response.answer.append(dns.rrset.from_text(name, 0, "IN", "CNAME", "x.loop.example."))
        response.answer.append(dns.rrset.from_text("x.loop.example.", 0, "IN", "CNAME", name))
        return response

    with FakeResolver(looping) as server:
        (report,) = check(config, server.port, tenant("loop.example"))
    assert {r.code for r in report.reasons} == {"dns_cname_loop"}


def test_next_resolver_is_tried_after_a_silent_one() -> None:
    require_dns_binaries()
    zone = Zone("customer.example", ["mta-sts CNAME mta-sts.provider.example."])
    with (
        FakeResolver(lambda query: None) as silent,
        start_dns([zone]) as (_knot, unbound),
    ):
        client = DnsClient(
            [("127.0.0.1", silent.port), (unbound.address, unbound.port)], timeout=2.0
        )
        answer = asyncio.run(client.lookup("mta-sts.customer.example", "CNAME"))
    assert (answer.status, answer.chain) == (OK, ())
    assert [r.to_text() for r in answer.records] == ["mta-sts.provider.example."]
    assert silent.queries == 1


def response(question: str, rdtype: str, *answers: tuple[str, str, str]) -> dns.message.Message:
    query = dns.message.make_query(question, rdtype)
    message = dns.message.make_response(query)
    for name, kind, value in answers:
        message.answer.append(dns.rrset.from_text(name, 0, "IN", kind, value))
    return message


def test_interpret_follows_the_chain_to_the_records() -> None:
    message = response(
        "_mta-sts.a.example",
        "TXT",
        ("_mta-sts.a.example.", "CNAME", "A.example._MTA-STS.p.example."),
        ("a.example._mta-sts.p.example.", "TXT", '"v=STSv1; id=1;"'),
    )
    answer = interpret("_mta-sts.a.example", "TXT", message)
    assert (answer.status, answer.chain) == (OK, ("a.example._mta-sts.p.example",))
    assert answer.final_name == "a.example._mta-sts.p.example"


def test_interpret_nxdomain_after_a_cname_keeps_the_cname() -> None:
    message = response("mta-sts.a.example", "A", ("mta-sts.a.example.", "CNAME", "gone.example."))
    message.set_rcode(dns.rcode.NXDOMAIN)
    answer = interpret("mta-sts.a.example", "A", message)
    assert (answer.status, answer.chain) == (NXDOMAIN, ("gone.example",))


def test_interpret_statuses() -> None:
    assert interpret("a.example", "MX", response("a.example", "MX")).status == NODATA
    failed = response("a.example", "MX")
    failed.set_rcode(dns.rcode.SERVFAIL)
    assert interpret("a.example", "MX", failed).status == SERVFAIL
    loop = response(
        "a.example",
        "A",
        ("a.example.", "CNAME", "b.example."),
        ("b.example.", "CNAME", "a.example."),
    )
    assert interpret("a.example", "A", loop).status == LOOP


@pytest.fixture
def never_answers() -> Iterator[FakeResolver]:
    with FakeResolver(lambda query: None) as server:
        yield server


def test_lookup_never_takes_longer_than_its_timeout(never_answers: FakeResolver) -> None:
    client = DnsClient([("127.0.0.1", never_answers.port)] * 2, timeout=0.4)

    async def timed() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        answer = await client.lookup("a.example", "A")
        return answer.status, loop.time() - start

    status, took = asyncio.run(timed())
    assert status == TIMEOUT
    assert took < 1.0
    assert client.queries == 4


@pytest.mark.parametrize(
    ("rcode", "code"),
    [(dns.rcode.REFUSED, "dns_refused"), (dns.rcode.NOTIMP, "dns_error")],
)
def test_other_resolver_errors_are_reasons(
    rcode: dns.rcode.Rcode, code: str, config: ProviderConfig
) -> None:
    def refuse(query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        return response

    with FakeResolver(refuse) as server:
        (report,) = check(config, server.port, tenant())
    assert {r.code for r in report.reasons} == {code}


def answering(query: dns.message.Message) -> dns.message.Message:
    reply = dns.message.make_response(query)
    name = query.question[0].name
    reply.answer.append(dns.rrset.from_text(name, 0, "IN", "A", "192.0.2.1"))
    return reply


def test_a_forged_or_stray_answer_is_ignored_and_the_real_one_taken() -> None:
    def forged_first(query: dns.message.Message) -> list[dns.message.Message]:
        wrong_id = answering(query)
        wrong_id.id = (query.id + 1) % 65536
        wrong_question = answering(dns.message.make_query("evil.example", "A"))
        wrong_question.id = query.id
        not_a_response = dns.message.make_query(query.question[0].name, "A")
        not_a_response.id = query.id
        real = answering(query)
        real.answer[0] = dns.rrset.from_text(query.question[0].name, 0, "IN", "A", "192.0.2.7")
        return [wrong_id, wrong_question, not_a_response, real]

    with FakeResolver(forged_first) as server:
        client = DnsClient([("127.0.0.1", server.port)], timeout=2.0)
        answer = asyncio.run(client.lookup("Mixed.Case.example", "A"))
    assert answer.status == OK
    assert [r.to_text() for r in answer.records] == ["192.0.2.7"]


def open_sockets() -> int:
    """Sockets this process has open (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def test_many_lookups_share_a_few_sockets_and_close_them() -> None:
    lookups = 600
    with FakeResolver(answering) as server:
        before = open_sockets()
        client = DnsClient([("127.0.0.1", server.port)], timeout=5.0, concurrency=100)

        async def many() -> list[str]:
            names = [f"host{n}.example" for n in range(lookups)]
            answers = await asyncio.gather(*(client.lookup(n, "A") for n in names))
            return [a.status for a in answers]

        statuses = asyncio.run(many())
        after = open_sockets()
    assert statuses == [OK] * lookups
    assert server.queries == lookups
    # A socket carries up to 256 queries before another takes its place.
    assert CHANNELS <= len(server.peers) <= CHANNELS + lookups // 256 + CHANNELS
    assert after == before


def test_queries_are_what_dnspython_would_send() -> None:
    for name, rdtype in [("_mta-sts.Example.COM", "TXT"), ("a.b.example", "CAA")]:
        made = dns.message.make_query(name.lower(), rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        made.id = 4660
        wire = query_wire(4660, question_wire(dns.name.from_text(name), rdtype))
        assert wire == made.to_wire()


def test_which_datagrams_count_as_the_answer() -> None:
    question = question_wire(dns.name.from_text("a.example"), "A")
    query = dns.message.make_query("a.example", "A")

    def wire(
        rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
        *,
        qr: bool = True,
        opcode: dns.opcode.Opcode = dns.opcode.QUERY,
        bare: bool = False,
    ) -> bytes:
        reply = dns.message.make_response(query)
        reply.set_rcode(rcode)
        if not qr:
            reply.flags &= ~dns.flags.QR
        reply.set_opcode(opcode)
        if bare:
            reply.question = []
        return reply.to_wire()

    assert matches(wire(), question)
    assert matches(wire().replace(b"example", b"EXAMPLE"), question)
    assert not matches(wire(qr=False), question)
    assert not matches(wire(opcode=dns.opcode.NOTIFY), question)
    assert matches(wire(dns.rcode.SERVFAIL, bare=True), question)
    assert not matches(wire(bare=True), question)
    other = question_wire(dns.name.from_text("b.example"), "A")
    assert not matches(wire(), other)
    assert not matches(wire()[:11], question)
