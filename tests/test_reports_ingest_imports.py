"""A folder of report files is ingested without dkimpy or dnspython's
resolver: they are for mail only, and importing them cost the whole
``reports ingest`` start-up more than storing a thousand reports
(docs/performance.md). A message still gets its DKIM check
(tests/test_reports_dkim.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support.layout import ROOT

_PROBE = """\
import json, sys
from policy_host.reports import batch, dkimcheck, ingest, sources
lookup = dkimcheck.resolver_lookup(("127.0.0.1", 53), 1.0)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_batch_modules_leave_dkim_and_the_resolver_unimported() -> None:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=dict(os.environ, PYTHONPATH=path),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = set(json.loads(done.stdout))
    assert "policy_host.reports.batch" in modules
    assert not {m for m in modules if m == "dkim" or m.startswith("dkim.")}
    assert "dns.resolver" not in modules
