"""The careful one-line edit of a tenant file: ``mode: A`` becomes ``mode: B``.

Only the top-level ``mode:`` line changes (its quoting and any comment on
it kept, a note of when and why added to it), so staff see exactly that in
their own history (``git diff``) and `apply` publishes it like any other
change. The edited text is read by the normal tenant reader before it
replaces the file, atomically and with the file's permissions.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from policy_host.errors import PolicyHostError, Problem
from policy_host.fileio import replace_file
from policy_host.read.tenantfile import MAX_TENANT_BYTES, parse_tenant
from policy_host.read.yamlfile import read_limited

# A top-level ``mode:`` line: the value plain or quoted, then an optional comment.
_MODE_LINE = re.compile(
    rb"^mode:(?P<space>[ \t]*)(?P<q>['\"]?)(?P<value>[a-z]+)(?P=q)"
    rb"(?P<rest>[ \t]*(?:#[^\r\n]*)?)(?P<end>\r?\n|\Z)",
    re.MULTILINE,
)


class EditError(PolicyHostError):
    """The tenant file cannot be edited safely; it is left as it was."""


@dataclass(frozen=True)
class Edit:
    path: Path
    before: bytes
    after: bytes
    old_line: str
    new_line: str

    def diff(self) -> str:
        """The change, as ``git diff`` would show the line."""
        return f"--- {self.path}\n+++ {self.path}\n-{self.old_line}\n+{self.new_line}\n"


def set_mode(
    path: Path, data: bytes, domain: str, old: str, new: str, note: str | None = None
) -> Edit:
    """The edited text of a tenant file, checked; raises ``EditError``.

    ``note`` (when and why) becomes a comment on the same line, replacing a
    note an earlier edit left there.
    """
    found = [m for m in _MODE_LINE.finditer(data) if m.group("value") == old.encode()]
    if len(found) != 1:
        raise EditError(f"{path}: expected one top-level 'mode: {old}' line, found {len(found)}")
    match = found[0]
    rest = match.group("rest")
    if note is not None:
        comment = ("# " + note).encode("ascii", "replace")
        if b"\n" in comment or b"\r" in comment:
            raise EditError(f"{path}: the note must be one line")
        rest = b"  " + comment
    line = b"mode:" + match.group("space") + match.group("q") + new.encode()
    line += match.group("q") + rest
    after = data[: match.start()] + line + match.group("end") + data[match.end() :]
    problems: list[Problem] = []
    tenant = parse_tenant(path, after, domain, problems)
    if tenant is None or tenant.policy.mode != new:
        said = "; ".join(str(p) for p in problems if p.is_error) or "mode did not change"
        raise EditError(f"{path}: the edited file would not be valid: {said}")
    before_line = data[match.start() : match.end()].rstrip(b"\r\n")
    return Edit(path, data, after, before_line.decode("utf-8"), line.decode("utf-8"))


def read_tenant_file(path: Path) -> bytes:
    data = read_limited(path, MAX_TENANT_BYTES)
    if isinstance(data, Problem):
        raise EditError(str(data))
    return data


def write_edit(edit: Edit) -> None:
    """Replace the file with the edited text, unless it changed meanwhile."""
    if read_tenant_file(edit.path) != edit.before:
        raise EditError(f"{edit.path}: changed while being edited; run again")
    mode = os.stat(edit.path).st_mode & 0o7777
    replace_file(edit.path, edit.after, mode=mode)
