"""Start-up of the light commands: they must not import the heavy libraries.

Every command pays for what its process imports, and the one-tenant
`reports` summary and `reload --changed` are mostly start-up
(docs/performance.md, "Command start-up"). The web framework, the WSGI
server, the DNS library, certbot and cryptography belong to the commands
that use them; a module-level import of any of them in a module every
command loads would silently cost every command again. Each case runs the
command in a fresh interpreter and lists what that process imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.layout import ROOT

# Top-level packages no light command needs: flask and werkzeug (the
# status page and the policy server), gunicorn (serve), dns (dnspython:
# check, apply, ingest's DKIM), certbot and cryptography (certs).
HEAVY = ("flask", "werkzeug", "gunicorn", "dns", "certbot", "cryptography")

# Runs the command line in this interpreter (main with arguments returns
# instead of leaving through os._exit), then writes the names of every
# module imported to the file named first.
_PROBE = """\
import json, sys
from policy_host.cli.main import main
try:
    status = main(sys.argv[2:])
except SystemExit as exc:  # --help
    status = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""


def imported_by(tmp_path: Path, *argv: str, prelude: str = "") -> tuple[int, set[str]]:
    """The exit status of ``policy-host ARGV...`` and the top-level packages
    its process imported; ``prelude`` runs first in the same process."""
    found = tmp_path / "modules.json"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run(
        [sys.executable, "-c", prelude + _PROBE, str(found), *argv],
        env=dict(os.environ, PYTHONPATH=path),
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    seen = json.loads(found.read_text())
    return seen["status"], {name.split(".")[0] for name in seen["modules"]}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["reports", "--help"],
        ["validate", "-q"],
        ["reports", "example.com", "--since", "30d"],
    ],
    ids=["help", "reports-help", "validate", "reports-one-tenant"],
)
def test_light_command_imports_no_heavy_library(
    tree: Path, tmp_path: Path, argv: list[str]
) -> None:
    config = ["--config", str(tree / "config.yaml")] if argv[-1] != "--help" else []
    status, packages = imported_by(tmp_path, *config, *argv)
    assert status == 0
    assert "policy_host" in packages  # the probe ran the command line
    assert sorted(packages.intersection(HEAVY)) == []


def test_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The check above can fail: the same probe, with the policy server's
    module imported first, finds gunicorn."""
    status, packages = imported_by(tmp_path, "--help", prelude="import policy_host.serve.server\n")
    assert status == 0
    assert "gunicorn" in packages
