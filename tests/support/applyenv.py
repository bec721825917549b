"""Helpers for `apply` tests: a provider tree wired to a real knotd, a
fake-able clock, a stand-in for the server, and ``policy-host serve``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rdatatype

from policy_host.publish.environment import ChangedDomains, Environment
from policy_host.publish.update import Primary, TsigKey, load_tsig_key
from policy_host.read.config import ProviderConfig, load_config
from policy_host.read.tenants import LoadResult
from policy_host.serve.compiler import compile_snapshot

from .dnsservers import KnotServer, query
from .dnsservers import TsigKey as HarnessKey
from .procs import LOOPBACK, Daemon, port_open

PROVIDER_ZONE = "provider.example."
ID_ZONE = "_mta-sts.provider.example"
POLICY_PATH = "/.well-known/mta-sts.txt"

_SCRIPT = Path(sys.executable).with_name("policy-host")
CLI: tuple[str, ...] = (
    (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "policy_host.cli.main")
)

ENFORCE = """\
mode: enforce
mx:
{mx}
max_age: {max_age}
"""


def tenant_text(*mx: str, max_age: int = 604800, mode: str = "enforce") -> str:
    lines = "\n".join(f"  - {pattern}" for pattern in mx)
    if mode == "none":
        return f"mode: none\nmax_age: {max_age}\n"
    return ENFORCE.format(mx=lines, max_age=max_age).replace("enforce", mode, 1)


def write_bind_key(path: Path, key: HarnessKey, *, mode: int = 0o600) -> Path:
    """The key in BIND ``tsig-keygen`` format, as the provider would keep it."""
    path.write_text(
        f'key "{key.name}" {{\n\talgorithm {key.algorithm};\n\tsecret "{key.secret}";\n}};\n'
    )
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class Provider:
    """A provider tree: config.yaml, tenants/, var/ (state) and a key file."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tenants(self) -> Path:
        return self.root / "tenants"

    def config(self) -> ProviderConfig:
        return load_config(self.config_path)

    def write(self, domain: str, text: str) -> None:
        self.tenants.mkdir(exist_ok=True)
        (self.tenants / f"{domain}.yaml").write_text(text)

    def remove(self, domain: str) -> None:
        (self.tenants / f"{domain}.yaml").unlink()


def make_provider(
    root: Path,
    *,
    primary_port: int | None,
    key: HarnessKey | None,
    bind_port: int = 8080,
    id_zone: str = ID_ZONE,
    withdrawal_max_age: int = 3600,
    verify_timeout: int = 3,
    workers: int = 1,
    extra: str = "",
) -> Provider:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tenants").mkdir(exist_ok=True)
    dns_lines = ""
    if primary_port is not None:
        dns_lines = f"dns:\n  primary: {LOOPBACK}:{primary_port}\n  txt_ttl: 60\n  timeout: 2\n"
        if key is not None:
            write_bind_key(root / "tsig.key", key)
            dns_lines += "  tsig_key_file: tsig.key\n"
    (root / "config.yaml").write_text(
        "tenants_dir: tenants\n"
        "state_dir: var\n"
        "policy_host: mta-sts.provider.example\n"
        f"id_zone: {id_zone}\n"
        f"serve:\n  bind: {LOOPBACK}:{bind_port}\n  workers: {workers}\n  threads: 2\n"
        f"{dns_lines}"
        f"apply:\n  verify_timeout: {verify_timeout}\n"
        f"  withdrawal_max_age: {withdrawal_max_age}\n"
        f"{extra}"
    )
    return Provider(root)


class FakeClock:
    """A clock tests move by hand (withdrawals last days)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InProcessServer:
    """The policy server as `apply` sees it, without processes: ``reload``
    compiles the snapshot as ``server.go_live`` does (tenant files plus the
    apply state), ``fetch`` answers from it as a worker would for a Host."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.table: dict[str, bytes] = {}
        self.reloads = 0

    def reload(self) -> None:
        """A plain `policy-host reload`."""
        self.table = compile_snapshot(self.config).snapshot.policies_by_host()
        self.reloads += 1

    def serve(self, result: LoadResult, force: bool) -> ChangedDomains | None:
        """The reload `apply` asks for: as ``real_environment``'s, the
        validated tenant files are compiled, and written (and served) only
        when something changed or ``force``."""
        compiled = compile_snapshot(
            self.config, loaded=result, proceed=lambda changed: bool(changed) or force
        )
        if not compiled.written:
            return None
        self.table = compiled.snapshot.policies_by_host()
        self.reloads += 1
        return compiled.changed_domains()

    def fetch(self, upstream: str, host: str) -> tuple[int, bytes]:
        body = self.table.get(host)
        return (200, body) if body is not None else (404, b"not found\n")

    def body(self, domain: str) -> bytes | None:
        return self.table.get(f"mta-sts.{domain}")


def environment(
    config: ProviderConfig,
    server: InProcessServer,
    clock: FakeClock,
    *,
    key: TsigKey | None = None,
) -> Environment:
    """Real DNS (the configured primary, the configured key), fake server."""
    primary = None
    if config.dns.primary is not None:
        if key is None:
            assert config.dns.tsig_key_file is not None
            key = load_tsig_key(config.dns.tsig_key_file, config.dns.tsig_algorithm)
        primary = Primary(config.dns.primary, key, config.dns.timeout)
    return Environment(
        reload=server.serve, fetch=server.fetch, dns=primary, clock=clock, sleep=time.sleep
    )


def provider_txt(knot: KnotServer, domain: str) -> list[tuple[bytes, ...]]:
    """The TXT strings at ``<domain>.<id zone>``, straight from knotd."""
    response = query(knot.port, f"{domain}.{ID_ZONE}.", "TXT", recursion=False)
    return [
        tuple(rdata.strings)
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    ]


def published_id(knot: KnotServer, domain: str) -> str | None:
    """The id in knotd's TXT for ``domain`` (None if there is no record)."""
    records = provider_txt(knot, domain)
    if not records:
        return None
    assert len(records) == 1, records
    text = b"".join(records[0]).decode("ascii")
    assert text.startswith("v=STSv1; id=") and text.endswith(";"), text
    return text.removeprefix("v=STSv1; id=").removesuffix(";")


@contextlib.contextmanager
def serve(provider: Provider, port: int) -> Iterator[int]:
    """``policy-host serve`` for ``provider`` on ``port`` (its serve.bind, which
    `apply` verifies at); yields the port."""
    argv = [*CLI, "--config", str(provider.config_path), "serve", "--bind", f"{LOOPBACK}:{port}"]
    with Daemon(
        argv,
        name="policy-host-serve",
        workdir=provider.root / "logs",
        ready=lambda: port_open(LOOPBACK, port),
        ready_timeout=15.0,
        stop_timeout=5.0,
    ):
        yield port
