"""The DNS test harness works: real knotd + unbound on loopback.

These tests prove what other tests rely on: unbound follows a CNAME from a
customer zone into the provider zone, multi-string TXT records survive,
TSIG-signed updates are applied (and unsigned or wrongly signed ones are
not), and changes are visible through unbound at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.tsig
import dns.update
import pytest
from support.dnsservers import DnsWorld, TsigKey, Zone, start_dns
from support.fixtures_dns import DEFAULT_POLICY_ID, default_dns_zones, require_dns_binaries
from support.procs import Daemon, DaemonError, free_port

CUSTOMER_TXT = "_mta-sts.customer.example"
PROVIDER_TXT = "customer.example._mta-sts.provider.example."
SPLIT_TXT = "split.example._mta-sts.provider.example"


@pytest.fixture
def dns_zones() -> list[Zone]:
    """The default zones plus a TXT record made of two strings."""
    zones = default_dns_zones()
    provider = zones[1]
    zones[1] = provider.with_records(
        *provider.records, 'split.example._mta-sts TXT "v=STSv1; " "id=abc;"'
    )
    return zones


def txt_strings(world: DnsWorld, name: str) -> list[tuple[bytes, ...]]:
    answer = world.resolver().resolve(name, "TXT")
    return [txt_of(rdata) for rdata in answer]


def txt_of(rdata: object) -> tuple[bytes, ...]:
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    return tuple(rdata.strings)


def txt_rdata(text: bytes) -> dns.rdtypes.ANY.TXT.TXT:
    # From bytes, not zone-file text: ';' starts a comment there.
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [text])


def replace_provider_txt(key: TsigKey, text: bytes) -> dns.update.UpdateMessage:
    update = key.update("provider.example.")
    update.replace(PROVIDER_TXT, 60, txt_rdata(text))
    return update


def assert_refused(world: DnsWorld, update: dns.update.UpdateMessage) -> None:
    try:
        response = world.knot.send_update(update)
    except dns.tsig.PeerError:
        return  # knotd answered with a TSIG error (BADSIG / BADKEY)
    assert response.rcode() in (dns.rcode.NOTAUTH, dns.rcode.REFUSED), dns.rcode.to_text(
        response.rcode()
    )


# -- resolution through unbound ---------------------------------------------


def test_txt_lookup_follows_cname_into_provider_zone(dns_world: DnsWorld) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = dns_world.unbound.port
    resolver.lifetime = 2.0

    answer = resolver.resolve(CUSTOMER_TXT, "TXT")

    assert answer.canonical_name.to_text() == PROVIDER_TXT
    assert [txt_of(rdata) for rdata in answer] == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]
    chain = answer.response.answer
    assert chain[0].rdtype == dns.rdatatype.CNAME
    assert chain[0][0].target.to_text() == PROVIDER_TXT


def test_knot_alone_does_not_chase_the_cname(dns_world: DnsWorld) -> None:
    # Why unbound is there: the authoritative answer stops at the CNAME.
    response = dns_world.knot.query(CUSTOMER_TXT, "TXT")
    assert [rrset.rdtype for rrset in response.answer] == [dns.rdatatype.CNAME]


def test_multi_string_txt_comes_back_as_several_strings(dns_world: DnsWorld) -> None:
    assert txt_strings(dns_world, SPLIT_TXT) == [(b"v=STSv1; ", b"id=abc;")]


def test_names_outside_the_test_zones_fail_fast(dns_world: DnsWorld) -> None:
    started = time.monotonic()
    response = dns_world.unbound.query("_mta-sts.not-served.example", "TXT")
    assert response.rcode() == dns.rcode.NXDOMAIN
    response = dns_world.unbound.query("www.example.org", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert time.monotonic() - started < 1.0


# -- dynamic updates ---------------------------------------------------------


def test_signed_update_is_applied_and_visible_at_once(dns_world: DnsWorld) -> None:
    before = dns_world.knot.serial("provider.example")
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]

    response = dns_world.knot.send_update(replace_provider_txt(dns_world.key, b"v=STSv1; id=new1;"))

    assert response.rcode() == dns.rcode.NOERROR
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(b"v=STSv1; id=new1;",)]
    after = dns_world.knot.serial("provider.example")
    assert before is not None and after is not None and after > before

    response = dns_world.knot.send_update(replace_provider_txt(dns_world.key, b"v=STSv1; id=new2;"))
    assert response.rcode() == dns.rcode.NOERROR
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(b"v=STSv1; id=new2;",)]


@pytest.mark.parametrize(
    "wrong_key",
    [
        pytest.param(TsigKey.generate(), id="same-name-other-secret"),
        pytest.param(TsigKey.generate(name="unknown-key."), id="unknown-key-name"),
    ],
)
def test_update_with_wrong_key_is_refused(dns_world: DnsWorld, wrong_key: TsigKey) -> None:
    assert wrong_key.name != dns_world.key.name or wrong_key.secret != dns_world.key.secret
    assert_refused(dns_world, replace_provider_txt(wrong_key, b"v=STSv1; id=evil;"))

    assert txt_strings(dns_world, CUSTOMER_TXT) == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]


def test_unsigned_update_and_update_of_static_zone_are_refused(dns_world: DnsWorld) -> None:
    unsigned = dns.update.UpdateMessage("provider.example.")
    unsigned.replace(PROVIDER_TXT, 60, txt_rdata(b"v=STSv1; id=unsigned;"))
    assert_refused(dns_world, unsigned)

    static = dns_world.key.update("customer.example.")
    static.replace("_mta-sts.customer.example.", 60, txt_rdata(b"v=STSv1; id=static;"))
    assert_refused(dns_world, static)

    assert txt_strings(dns_world, CUSTOMER_TXT) == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]


# -- changing zones mid-test -------------------------------------------------


def test_set_zones_changes_the_answer(dns_world: DnsWorld) -> None:
    customer, provider = default_dns_zones()
    serial = dns_world.knot.serial("provider.example")

    dns_world.set_zones(
        [
            customer,
            provider.with_records('customer.example._mta-sts TXT "v=STSv1; id=reloaded1;"'),
        ]
    )
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(b"v=STSv1; id=reloaded1;",)]
    new_serial = dns_world.knot.serial("provider.example")
    assert serial is not None and new_serial is not None and new_serial > serial

    # After a dynamic update bumped the serial, a reload still wins.
    response = dns_world.knot.send_update(replace_provider_txt(dns_world.key, b"v=STSv1; id=dyn;"))
    assert response.rcode() == dns.rcode.NOERROR
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(b"v=STSv1; id=dyn;",)]
    dns_world.knot.replace_zone(
        provider.with_records('customer.example._mta-sts TXT "v=STSv1; id=reloaded2;"')
    )
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(b"v=STSv1; id=reloaded2;",)]

    # Removing the record gives NXDOMAIN at once (negative caching is off).
    dns_world.knot.replace_zone(provider.with_records())
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns_world.resolver().resolve(CUSTOMER_TXT, "TXT")


def test_set_zones_can_add_a_zone(dns_world: DnsWorld) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns_world.resolver().resolve("_mta-sts.new.example", "TXT")

    dns_world.set_zones(
        [*default_dns_zones(), Zone("new.example", ['_mta-sts TXT "v=STSv1; id=added;"'])]
    )

    assert txt_strings(dns_world, "_mta-sts.new.example") == [(b"v=STSv1; id=added;",)]
    # The other zones are still served.
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]


def test_set_zones_can_remove_and_restore_a_zone(dns_world: DnsWorld) -> None:
    customer, provider = default_dns_zones()

    dns_world.set_zones([provider])
    with pytest.raises(dns.resolver.NXDOMAIN):
        dns_world.resolver().resolve(CUSTOMER_TXT, "TXT")

    # No negative answer may linger in unbound once the zone is back.
    dns_world.set_zones([customer, provider])
    assert txt_strings(dns_world, CUSTOMER_TXT) == [(f"v=STSv1; id={DEFAULT_POLICY_ID};".encode(),)]


# -- lifecycle and the generic helpers ----------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_servers_are_stopped_and_cleaned_up_on_exit() -> None:
    require_dns_binaries()
    with start_dns(default_dns_zones()) as (knot, unbound):
        pids = [knot.daemon.pid, unbound.daemon.pid]
        dirs = [knot.workdir, unbound.workdir]
        assert all(pid_alive(pid) for pid in pids)
        message = dns.message.make_query(CUSTOMER_TXT, "TXT")
        assert message.question
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(path.exists() for path in dirs)


def test_free_port_is_free_for_tcp_and_udp() -> None:
    port = free_port("both")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))


def test_daemon_failed_start_reports_log_tail() -> None:
    daemon = Daemon(
        ["sh", "-c", "echo boom-from-child; exit 3"], name="failing", ready=lambda: False
    )
    with pytest.raises(DaemonError, match="boom-from-child") as info, daemon:
        pass
    assert "exit status 3" in str(info.value)


def test_daemon_stop_kills_a_process_that_ignores_sigterm() -> None:
    argv = ["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"]
    with Daemon(argv, name="stubborn", stop_timeout=0.5) as daemon:
        time.sleep(0.2)
        pid = daemon.pid
    assert daemon.proc is not None
    assert daemon.proc.returncode == -signal.SIGKILL
    assert not pid_alive(pid)


def test_missing_binary_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="knotd, knotc, unbound"):
        require_dns_binaries()

    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="knotd"):
        require_dns_binaries()
