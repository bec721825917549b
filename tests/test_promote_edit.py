"""The one-line edit of a tenant file: only the mode line changes, checked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_host.promote.edit import EditError, set_mode, write_edit

FILE = b"""\
# Customer example.com: moved to MTA-STS in 2026.
mode: testing   # first weeks
mx:
  - mx1.example.com   # primary
  - "*.backup.example.com"
max_age: 604800
note: |
  mode: testing is what we start with
"""


def test_only_the_mode_line_changes(tmp_path: Path) -> None:
    path = tmp_path / "example.com.yaml"
    edit = set_mode(path, FILE, "example.com", "testing", "enforce")
    assert edit.after == FILE.replace(b"mode: testing   # first", b"mode: enforce   # first")
    assert edit.diff().splitlines()[2:] == [
        "-mode: testing   # first weeks",
        "+mode: enforce   # first weeks",
    ]


def test_a_note_replaces_the_comment_on_that_line(tmp_path: Path) -> None:
    edit = set_mode(tmp_path / "example.com.yaml", FILE, "example.com", "testing", "enforce", "why")
    lines = edit.after.splitlines()
    assert lines[1] == b"mode: enforce  # why"
    assert [n for n, (a, b) in enumerate(zip(lines, FILE.splitlines(), strict=True)) if a != b] == [
        1
    ]


def test_quotes_and_crlf_are_kept(tmp_path: Path) -> None:
    data = b'mode: "enforce"\r\nmx: [mx.example.com]\r\nmax_age: 604800\r\n'
    edit = set_mode(tmp_path / "example.com.yaml", data, "example.com", "enforce", "testing")
    assert edit.after == data.replace(b'"enforce"', b'"testing"')


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"mode: enforce\nmx: [mx.example.com]\nmax_age: 604800\n", "found 0"),
        (b"mode: testing\nmode: testing\nmx: [a.example.com]\nmax_age: 86400\n", "found 2"),
        # The edit itself is fine, the file is not: nothing is written.
        (b"mode: testing\nmx: [a.example.com]\nmax_age: 86400\nbogus: 1\n", "would not be valid"),
    ],
)
def test_refused_edits(tmp_path: Path, data: bytes, said: str) -> None:
    with pytest.raises(EditError, match=said):
        set_mode(tmp_path / "example.com.yaml", data, "example.com", "testing", "enforce")


def test_write_replaces_atomically_and_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "example.com.yaml"
    path.write_bytes(FILE)
    path.chmod(0o640)
    edit = set_mode(path, FILE, "example.com", "testing", "enforce")
    write_edit(edit)
    assert path.read_bytes() == edit.after
    assert path.stat().st_mode & 0o777 == 0o640


def test_write_refuses_a_file_changed_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "example.com.yaml"
    path.write_bytes(FILE)
    edit = set_mode(path, FILE, "example.com", "testing", "enforce")
    path.write_bytes(FILE + b"# someone else\n")
    with pytest.raises(EditError, match="changed while being edited"):
        write_edit(edit)
    assert path.read_bytes().endswith(b"# someone else\n")
