"""A provider tree for promotion and guard tests: tenants, a published
state, stored check and certificate results, and TLS reports ingested
through the real `reports ingest` command."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from policy_host.certs.attempts import attempt_log
from policy_host.model import Policy
from policy_host.read.config import ProviderConfig, load_config
from policy_host.render import render
from policy_host.results import CheckResult, put_checks
from policy_host.state import NEW, PUBLISHED, Pending, Store

from .applyenv import CLI

DAY = 86_400

CONFIG = """\
tenants_dir: tenants
state_dir: var
policy_host: mta-sts.provider.example
id_zone: _mta-sts.provider.example
tlsrpt:
  rua: [mailto:tlsrpt@provider.example]
  zone: _smtp._tls.provider.example
  unverified_mail: record
promote:
  min_testing_days: 14
  min_sessions: 100
  min_organizations: 2
  max_failure_rate: 0.01
"""


def tree(root: Path, tenants: dict[str, str], extra: str = "") -> ProviderConfig:
    (root / "tenants").mkdir(parents=True)
    (root / "config.yaml").write_text(CONFIG + extra)
    for domain, text in tenants.items():
        (root / "tenants" / f"{domain}.yaml").write_text(text)
    return load_config(root / "config.yaml")


def tenant_yaml(mode: str, mx: Sequence[str], max_age: int = 604_800, extra: str = "") -> str:
    items = "".join(f"  - '{m}'\n" for m in mx)
    return f"# customer file\nmode: {mode}\nmx:\n{items}max_age: {max_age}\n{extra}"


def publish(
    config: ProviderConfig, domain: str, mode: str, mx: Sequence[str], max_age: int, at: float
) -> str:
    """Commit a published policy in the apply state as `apply` would, at ``at``."""
    body = render(Policy(mode, tuple(mx), max_age))
    fingerprint = hashlib.sha256(body).hexdigest()
    policy_id = time.strftime("%Y%m%d%H%M%S", time.gmtime(at)) + fingerprint[:8]
    with Store(config.state_db) as store:
        store.begin({domain: Pending(NEW, policy_id, fingerprint, body, max_age)}, at)
        store.mark([domain], PUBLISHED, at)
        store.commit([domain], at, confirmed=True)
    return policy_id


def report_json(
    domain: str,
    org: str,
    day: float,
    success: int,
    failure: int = 0,
    mx: Sequence[str] = (),
    details: Sequence[dict[str, object]] = (),
) -> dict[str, object]:
    start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(day))
    end = time.strftime("%Y-%m-%dT23:59:59Z", time.gmtime(day))
    return {
        "organization-name": org,
        "date-range": {"start-datetime": start, "end-datetime": end},
        "contact-info": f"tlsrpt@{org.lower().replace(' ', '')}.example",
        "report-id": f"{org}-{domain}-{start}",
        "policies": [
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-string": ["version: STSv1", "mode: testing"],
                    "policy-domain": domain,
                    "mx-host": list(mx),
                },
                "summary": {
                    "total-successful-session-count": success,
                    "total-failure-session-count": failure,
                },
                "failure-details": list(details),
            }
        ],
    }


def ingest(config: ProviderConfig, folder: Path, reports: Sequence[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, report in enumerate(reports):
        (folder / f"r{n}.json").write_text(json.dumps(report))
    done = subprocess.run(
        [*CLI, "--config", str(config.path), "reports", "ingest", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def policy_host(config: ProviderConfig, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config.path), *argv], capture_output=True, text=True, timeout=120
    )


def provider_with_evidence(tmp_path: Path, *, auto: bool = False) -> ProviderConfig:
    """ready.example (testing, every piece of evidence), young.example
    (testing for 3 days, one reporter), done.example (enforce)."""
    now = time.time()
    mx = ("mx1.ready.example", "mx2.ready.example")
    extra = "promote:\n  auto: true\n" if auto else ""
    config = tree(
        tmp_path / "provider",
        {
            "ready.example": tenant_yaml("testing", ["*.ready.example"], extra=extra),
            "young.example": tenant_yaml("testing", ["mx.young.example"]),
            "done.example": tenant_yaml("enforce", ["mx.done.example"]),
        },
    )
    publish(config, "ready.example", "testing", ["*.ready.example"], 604_800, now - 20 * DAY)
    publish(config, "young.example", "testing", ["mx.young.example"], 604_800, now - 3 * DAY)
    publish(config, "done.example", "enforce", ["mx.done.example"], 604_800, now - 40 * DAY)
    put_checks(
        config.results_db,
        [
            CheckResult("ready.example", now - 600, "ok", "testing", (), mx),
            CheckResult("young.example", now - 600, "ok", "testing", (), ("mx.young.example",)),
            CheckResult(
                "done.example",
                now - 600,
                "fail",
                "enforce",
                ({"code": "mx_mismatch", "severity": "fail", "message": "m", "subject": "s"},),
                ("mx9.done.example",),
            ),
        ],
    )
    with attempt_log(config.certs_db, read_only=False) as certs:
        for name in ("ready", "young", "done"):
            certs.certificate(f"mta-sts.{name}.example", now + 60 * DAY)
    yesterday = now - DAY
    failure = {
        "result-type": "certificate-expired",
        "receiving-mx-hostname": "mx9.done.example",
        "failed-session-count": 40,
    }
    ingest(
        config,
        tmp_path / "drop",
        [
            report_json("ready.example", "Google", yesterday, 700, 1, ["*.ready.example"]),
            report_json("ready.example", "Microsoft", yesterday, 300, 0, ["*.ready.example"]),
            report_json("young.example", "Google", yesterday, 500, 0, ["mx.young.example"]),
            report_json(
                "done.example", "Google", yesterday, 60, 40, ["mx.done.example"], [failure]
            ),
        ],
    )
    return config
