"""A provider tree with TLS reporting on, and an in-process ingester over a
real SQLite report store (for the report tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

from policy_host.read.config import ProviderConfig, load_config
from policy_host.reports.ingest import Ingester, Outcome
from policy_host.reports.sources import file_input, ingest_one, make_ingester
from policy_host.reports.store import Store

from .layout import EXAMPLES, ROOT

CORPUS = ROOT / "tests" / "reports" / "corpus"
EXPECTED = ROOT / "tests" / "reports" / "expected.txt"

TLSRPT_CONFIG = """
tlsrpt:
  rua: [mailto:tlsrpt@provider.example, https://tlsrpt.provider.example/v1/report]
  zone: _smtp._tls.provider.example
  unverified_mail: {unverified}
"""


def report_tree(tmp_path: Path, *, unverified: str = "record") -> ProviderConfig:
    """The bundled example tree plus a ``tlsrpt`` section and an IDN tenant."""
    target = tmp_path / "provider"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("var"))
    with (target / "config.yaml").open("a") as handle:
        handle.write(TLSRPT_CONFIG.format(unverified=unverified))
    shutil.copy(
        target / "tenants" / "example.com.yaml", target / "tenants" / "xn--bcher-kva.example.yaml"
    )
    return load_config(target / "config.yaml")


def ingest_paths(ingester: Ingester, paths: list[Path]) -> list[Outcome]:
    """Each file ingested and committed on its own, as the CLI would."""
    outcomes = []
    for path in paths:
        with ingester.store.transaction() as conn:
            outcomes.append(ingest_one(ingester, conn, file_input(path, 20 * 1024 * 1024)))
    return outcomes


__all__ = ["CORPUS", "EXPECTED", "Store", "ingest_paths", "make_ingester", "report_tree"]
