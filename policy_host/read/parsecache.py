"""Remember what each tenant file parsed to, keyed by the file's identity.

Reading 100,000 tenant files costs seconds of CPU even with libyaml, and
almost every run (a reload after one edit, `apply`, `check`, the server
starting) meets files that have not changed since the run before. The cache
(``<state_dir>/parse-cache.json``, next to the snapshot) maps each file name
to the identity the file had when it was read (size, mtime_ns, ctime_ns,
inode, device) and to what reading it gave: the domain, the tenant's fields
and every problem (warnings are printed again on every run).

It is only an accelerator. A cache that is missing, unreadable, corrupt or
made for something else (another tenants folder or id_zone, other code: the
key covers the sizes and mtimes of the modules that parse, and the PyYAML
and idna versions) is ignored and the files are read. A file whose identity
differs is read again; ctime_ns cannot be set from user space, so a file
rewritten in place with its old size and mtime (``cp -p``) is still seen.

Racily clean entries (git's term) are not stored: a file whose mtime or
ctime lies within ``RACY_SECONDS`` of the moment it was looked at could be
written again within the same clock tick, with the same size, and nothing in
its identity would show it. Such a file is read on every run until it has
been left alone that long.

The cache is JSON, never pickle: the root-run `certs` timer reads it, and
data must never become code.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import idna
import yaml

from policy_host.errors import Problem, Severity
from policy_host.fileio import Identity, file_identity, replace_file
from policy_host.model import Policy, Tenant

log = logging.getLogger(__name__)

FORMAT = 2
RACY_SECONDS = 2.0

# What reading one tenant file gives: its domain (None: the file name is
# not a usable domain), the tenant if it is valid, every problem, and the
# policy bytes served for the tenant (``render``; None if not valid).
Outcome = tuple[str | None, Tenant | None, list[Problem], bytes | None]

_SEVERITY = {"e": Severity.ERROR, "w": Severity.WARNING}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while loading: building 100,000 small
    objects otherwise triggers collections that walk them all again and
    again (a third of the time), and none of them is cyclic garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cache_key(modules: Iterable[ModuleType], *settings: str) -> str:
    """What a cached outcome depends on besides the file itself."""
    parts = [str(FORMAT), yaml.__version__, idna.__version__, *settings]
    for module in modules:
        source = module.__file__ or module.__name__
        try:
            st = os.stat(source)
            parts.append(f"{module.__name__}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{module.__name__}:?")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _dump(outcome: Outcome) -> list[Any]:
    domain, tenant, problems, body = outcome
    fields = None
    if tenant is not None:
        p = tenant.policy
        fields = [p.mode, list(p.mx), p.max_age, tenant.note, list(tenant.tlsrpt_rua)]
    shown = [[q.line, q.message, "e" if q.is_error else "w"] for q in problems]
    return [domain, fields, shown, body.decode("ascii") if body is not None else None]


def restore_tenant(domain: str, fields: list[Any], where: str) -> Tenant:
    """The tenant of a cached entry (``fields`` as ``_dump`` wrote them)."""
    mode, mx, max_age, note, rua = fields
    return Tenant(domain, Policy(mode, tuple(mx), max_age), where, note, tuple(rua))


def restore_problems(shown: list[Any], where: str) -> list[Problem]:
    return [Problem(where, line, message, _SEVERITY[sev]) for line, message, sev in shown]


class LoadedCaches:
    """The parse cache file a run loaded last, kept by whoever runs several
    loads (`apply` validates, then compiles): the file is only ever
    replaced by rename, so while its identity is the same so is its
    content, and with 100,000 tenants reading it again costs a few tenths
    of a second. Dropping the object frees it."""

    def __init__(self) -> None:
        self.last: tuple[Path, Identity, str, dict[str, list[Any]]] | None = None

    def get(self, path: Path, ident: Identity | None, key: str) -> dict[str, list[Any]] | None:
        if ident is not None and self.last is not None and self.last[:3] == (path, ident, key):
            return self.last[3]
        return None


class ParseCache:
    """Outcomes by file name, valid for one ``key``; see the module docstring."""

    def __init__(self, path: Path | None, key: str, items: dict[str, list[Any]] | None = None):
        self.path = path
        self.key = key
        # file name -> [identity, [domain, fields, problems, body]]
        self.items: dict[str, list[Any]] = items or {}

    @classmethod
    def load(cls, path: Path | None, key: str, loaded: LoadedCaches | None = None) -> ParseCache:
        """The cache at ``path``; an empty one if it cannot be used.
        ``loaded``: the caches this run read before, reused while unchanged."""
        if path is None:
            return cls(None, key)
        try:
            ident = file_identity(path)
        except OSError:
            ident = None
        known = loaded.get(path, ident, key) if loaded is not None else None
        if known is not None:
            return cls(path, key, known)
        try:
            with open(path, "rb") as handle:
                raw = json.loads(handle.read())
            if raw["format"] != FORMAT or raw["key"] != key:
                return cls(path, key)
            items = raw["files"]
            if not isinstance(items, dict):
                raise TypeError("files is not a mapping")
        except FileNotFoundError:
            return cls(path, key)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("%s: not using the parse cache: %s", path, exc)
            return cls(path, key)
        if loaded is not None and ident is not None:
            loaded.last = (path, ident, key, items)
        return cls(path, key, items)

    def save(self, found: Mapping[str, Identity], read: Mapping[str, Outcome], now_ns: int) -> bool:
        """Store what is known now: ``found`` is every tenant file (name ->
        identity), ``read`` the outcomes of those read this run (the others
        came from this cache). Racily clean files are left out. The file is
        replaced atomically, and only when something changed. True when
        written."""
        if self.path is None or (not read and found.keys() == self.items.keys()):
            return False
        racy_after = now_ns - int(RACY_SECONDS * 1e9)
        items: dict[str, list[Any]] = {}
        for name, ident in found.items():
            outcome = read.get(name)
            if outcome is None:
                items[name] = self.items[name]
            elif max(ident[1], ident[2]) < racy_after:
                items[name] = [list(ident), _dump(outcome)]
            elif name in self.items:
                # Racily clean: not stored yet. The old entry stays (its
                # identity no longer matches, so it is never used), so that
                # one edited file does not rewrite the whole cache.
                items[name] = self.items[name]
        if items.keys() == self.items.keys() and all(
            items[name] is self.items[name] for name in read if name in items
        ):
            return False
        data = json.dumps(
            {"format": FORMAT, "key": self.key, "files": items}, separators=(",", ":")
        ).encode()
        try:
            # No fsync: a lost or torn cache is only a slower next run (and a
            # torn one fails to parse).
            replace_file(self.path, data, mode=0o640, fsync=False, fsync_folder=False)
        except OSError as exc:
            # Read-only state folder (e.g. `validate` by staff): fine, slower.
            log.info("%s: cannot write the parse cache: %s", self.path, exc)
            return False
        self.items = items
        return True
