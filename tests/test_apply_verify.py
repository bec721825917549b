"""What `apply` verifies before it publishes, and how it fetches and waits.

- it verifies exactly what the compile changed (plus every planned change),
  at every upstream, with no prediction of its own;
- it fetches HTTPS upstreams as a sender does (``fetch.fetch_from``: SNI,
  certificate checked, TLS 1.2 or later);
- it waits as long as every way of serving takes to swap (one watch
  interval for ``policy-host serve`` and ``gunicorn policy_host.serve.wsgi``).
"""

from __future__ import annotations

import importlib
import ssl
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.policyhttps import PolicyHttpsServer, Reply
from support.tls import TestCA, make_ca
from test_apply_plan import FakeDns, fake_config

from policy_host.fetch import client_context, fetch_from
from policy_host.publish.apply import run
from policy_host.publish.environment import (
    ChangedDomains,
    Environment,
    real_environment,
    settle_time,
)
from policy_host.read.config import ProviderConfig
from policy_host.read.tenants import LoadResult
from policy_host.serve.compiler import compile_snapshot

HOST = "mta-sts.a.example"
BODY = b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n"


# -- verify exactly what the compile changed ----------------------------------


def recording_env(
    config: ProviderConfig, extra: ChangedDomains, fetched: list[str], *, serve_extra: bool
) -> Environment:
    """A server whose compile reports ``extra`` as changed besides what it
    really changed; it serves ``extra`` only with ``serve_extra``."""
    table: dict[str, bytes] = {}

    def reload(result: LoadResult, force: bool) -> ChangedDomains:
        compiled = compile_snapshot(config, loaded=result)
        table.clear()
        table.update(compiled.snapshot.policies_by_host())
        if serve_extra:
            table.update({f"mta-sts.{d}": b for d, b in extra.items() if b is not None})
        return {**compiled.changed_domains(), **extra}

    def fetch(upstream: str, host: str) -> tuple[int, bytes]:
        fetched.append(host)
        body = table.get(host)
        return (200, body) if body is not None else (404, b"")

    return Environment(reload=reload, fetch=fetch, dns=FakeDns([]), sleep=lambda s: None)


def test_apply_verifies_every_domain_the_compile_changed(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    (config.tenants_dir / "a.example.yaml").write_text("mode: none\nmax_age: 86400\n")
    fetched: list[str] = []
    # The compile also changed b.example (say, a tenant file edited back
    # while an earlier reload served something else): verified too.
    env = recording_env(config, {"b.example": BODY}, fetched, serve_extra=True)

    report = run(config, env)

    assert report.failure is None, report.failure
    assert {"mta-sts.a.example", "mta-sts.b.example"} <= set(fetched)


def test_a_changed_domain_an_upstream_does_not_serve_stops_the_run(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    (config.tenants_dir / "a.example.yaml").write_text("mode: none\nmax_age: 86400\n")
    env = recording_env(config, {"b.example": BODY}, [], serve_extra=False)
    assert isinstance(env.dns, FakeDns)

    report = run(config, env)

    assert report.failure is not None
    assert (report.failure.step, report.failure.domains) == ("verify", ["b.example"])
    assert env.dns.sent == []  # nothing published


def test_nothing_changed_and_nothing_planned_means_no_reload(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    (config.tenants_dir / "a.example.yaml").write_text("mode: none\nmax_age: 86400\n")
    calls: list[bool] = []

    def reload(result: LoadResult, force: bool) -> ChangedDomains | None:
        calls.append(force)
        compiled = compile_snapshot(
            config, loaded=result, proceed=lambda changed: bool(changed) or force
        )
        return compiled.changed_domains() if compiled.written else None

    def fetch(upstream: str, host: str) -> tuple[int, bytes]:
        body = (config.www_dir / host).read_bytes()
        return 200, body

    env = Environment(reload=reload, fetch=fetch, dns=FakeDns([]), sleep=lambda s: None)
    assert run(config, env).reload is True
    again = run(config, env)
    assert again.failure is None and again.reload is False
    assert calls == [True, False]  # the rerun's compile found nothing to serve


# -- HTTPS upstreams: as a sender fetches --------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def upstream(ca: TestCA) -> Iterator[PolicyHttpsServer]:
    good = ca.issue("front", [HOST], days=30)
    other = ca.issue("other", ["mta-sts.someone-else.example"], days=30)
    with PolicyHttpsServer({HOST: good}, other, {HOST: Reply(200, BODY)}) as server:
        yield server


def test_an_https_upstream_is_fetched_with_the_tenants_name_as_sni(
    upstream: PolicyHttpsServer, ca: TestCA
) -> None:
    got = fetch_from(
        f"https://127.0.0.1:{upstream.port}", HOST, timeout=3.0, context=client_context(ca.cert)
    )
    assert got == (200, BODY)
    assert upstream.seen == [(HOST, HOST)]


def test_an_https_upstream_with_a_certificate_for_another_name_is_refused(
    upstream: PolicyHttpsServer, ca: TestCA
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch_from(
            f"https://127.0.0.1:{upstream.port}",
            "mta-sts.b.example",  # gets the default certificate
            timeout=3.0,
            context=client_context(ca.cert),
        )


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_an_https_upstream_that_speaks_only_tls_1_1_is_refused(ca: TestCA) -> None:
    chain, key = ca.issue("old", [HOST], days=30)
    server = PolicyHttpsServer({}, (chain, key), {HOST: Reply(200, BODY)})
    server.httpd.socket.context.maximum_version = ssl.TLSVersion.TLSv1_1  # type: ignore[attr-defined]
    with server, pytest.raises(ssl.SSLError):
        fetch_from(
            f"https://127.0.0.1:{server.port}", HOST, timeout=3.0, context=client_context(ca.cert)
        )
    assert server.seen == []


def test_the_fetch_context_asks_for_tls_1_2_or_later() -> None:
    assert client_context().minimum_version >= ssl.TLSVersion.TLSv1_2


# -- one watch interval -----------------------------------------------------------


def test_every_way_of_serving_swaps_within_what_apply_waits_for(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy_host.serve.server import PolicyServer

    monkeypatch.setenv("POLICY_HOST_CONFIG", str(config.path))
    sys.modules.pop("policy_host.serve.wsgi", None)
    try:
        wsgi = importlib.import_module("policy_host.serve.wsgi")
    finally:
        sys.modules.pop("policy_host.serve.wsgi", None)
    served = PolicyServer(config, bind="127.0.0.1:0", workers=1, threads=1).load()
    tables = [app.extensions["policy_host"] for app in (wsgi.app, served)]
    watchers = [t for t in threading.enumerate() if t.name == "policy-host-snapshot-watcher"]
    for table in tables:  # no thread outlives the test (others fork only without)
        table.stop_watching()
    for thread in watchers:
        thread.join(timeout=5)
        assert not thread.is_alive()
    by_wsgi, by_serve = (table.watch_interval for table in tables)
    waited = real_environment(config).settle

    assert by_wsgi is not None and by_serve is not None
    assert by_wsgi == by_serve
    assert waited == settle_time(by_wsgi) > by_wsgi
