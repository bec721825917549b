"""Who may run a command that writes into ``state_dir``.

The server (gunicorn, ``deploy/policy-host.service``) runs as the owner of
``state_dir`` and reads what ``apply`` and ``reload`` write there: the
snapshot, its change journal, the policy files nginx serves. Written by
another user (root, typically), those files are that user's, mode 0600:
the workers can no longer read them and keep serving the old policies
while nginx serves the new ones, and the next run as the owner cannot
replace them. So those commands run as the owner or not at all.
``reports`` too: the server's report route and the MTA's pipe (which runs
as the service user) write ``reports.sqlite3``; made or migrated by root,
both could never store a report again. A refused ``reports ingest -``
exits 75, so the MTA keeps the message and retries instead of bouncing it.

``certs`` and ``nginx-conf`` write certbot's files and nginx's config and
reload nginx, which are root's (``deploy/policy-host-certs.service``); in
``state_dir`` they write only files of their own (``certs.sqlite3``, their
locks), never one the server reads. They run as root or as the owner.

A dry run writes nothing, so anyone who can read the files may run one.
A ``state_dir`` that does not exist yet is made by the command, owned by
whoever runs it (``deploy/install`` makes it, owned by the service user).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

__all__ = ["OWNER_ONLY", "OWNER_OR_ROOT", "refusal", "wrong_user"]

# `nodes --push` writes the nodes' server blocks under state_dir, as apply does.
OWNER_ONLY = frozenset({"apply", "nodes", "reload", "reports", "serve", "watch"})
OWNER_OR_ROOT = frozenset({"certs", "nginx-conf"})


def wrong_user(command: str, *, dry_run: bool, owner: int | None, uid: int) -> bool:
    """True when ``uid`` must not run ``command`` on a state_dir owned by
    ``owner`` (None: it does not exist yet)."""
    if dry_run or owner is None or uid == owner:
        return False
    if command in OWNER_ONLY:
        return True
    return command in OWNER_OR_ROOT and uid != 0


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def refusal(command: str, state_dir: Path, *, dry_run: bool = False) -> str | None:
    """The message that refuses this run, or None when it may go ahead."""
    try:
        owner: int | None = state_dir.stat().st_uid
    except FileNotFoundError:
        owner = None
    uid = os.geteuid()
    if not wrong_user(command, dry_run=dry_run, owner=owner, uid=uid):
        return None
    assert owner is not None
    who = _name(owner)
    also = " (or root)" if command in OWNER_OR_ROOT else ""
    return (
        f"policy-host: {command} must run as {who}{also}, the owner of {state_dir} "
        f"(state_dir), not as {_name(uid)}: the server runs as {who} and must be able to "
        f"read and replace every file {command} writes there. Run it as: "
        f"runuser -u {who} -- policy-host {command} ..."
    )
