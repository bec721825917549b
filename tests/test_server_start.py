"""Starting with the snapshot of an earlier run: the workers serve it at once
and the master compiles beside them; what changed meanwhile goes live then."""

from __future__ import annotations

import re
import time
from pathlib import Path

from support.procs import wait_until
from test_server_gunicorn import make_site, serve

from policy_host.read.config import load_config


def test_a_restart_serves_at_once_and_catches_up_with_the_files(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    with serve(site) as first:
        old = first.body_or_none("example.com")
    assert old is not None and old.endswith(b"max_age: 604800\r\n")
    # While the server is down, a tenant changes.
    path = site.tenant("example.com")
    path.write_text(path.read_text().replace("604800", "1209600"))
    started = time.monotonic()
    with serve(site) as second:
        # It answered before the compile could have finished (the old
        # snapshot: what was served, and verified, before the restart) ...
        assert second.body_or_none("example.org") is not None
        # ... and the change goes live without anyone asking.
        wait_until(
            lambda: (second.body_or_none("example.com") or b"").endswith(b"1209600\r\n"),
            10,
            what="the change to go live",
        )
        assert time.monotonic() - started < 10
        www = load_config(site.config).www_dir
        assert (www / "mta-sts.example.com").read_bytes().endswith(b"max_age: 1209600\r\n")
        # The compile ran in a child of the master, which reaped it; the
        # server is still up.
        log = (second.daemon.log_path).read_text()
        match = re.search(r"compiling the tenants in the background \(pid (\d+)\)", log)
        assert match, log
        child = Path(f"/proc/{match.group(1)}")
        wait_until(lambda: not child.exists(), 10, what="the compile child to be reaped")
        second.daemon.check_alive()
        assert len(second.workers()) == 2
