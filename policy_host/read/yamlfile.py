"""Read one small YAML file into located values, refusing what YAML allows
but a hand-edited config should never contain.

PyYAML's C composer (libyaml) builds the node tree when it is available; the
walk below turns nodes into plain values that remember their line, so every
later check can say ``path:line: what is wrong``. Duplicate keys, anchors and
aliases (the "billion laughs" bomb), tabs, byte order marks, non-UTF-8 bytes,
non-string keys and custom tags are refused here, before any schema check.
"""

from __future__ import annotations

import datetime
import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

import yaml

from policy_host.errors import Problem

try:  # libyaml is 5-6x faster; the pure-Python parser accepts the same input.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

# Deeper than any config or tenant file needs (they use three levels).
MAX_DEPTH = 16

Scalar = str | int | float | bool | None | bytes | datetime.date | datetime.datetime


class Node(NamedTuple):
    """A YAML value and the 1-based line it stands on.

    For a mapping entry the line is the key's line, so that an error about a
    whole block value (``mx:`` followed by a list) points at its key. (A
    named tuple: a tenant file has a handful, 100,000 files half a million,
    and a tuple is made in half the time of a frozen dataclass.)
    """

    value: Scalar | list[Node] | dict[str, Node]
    line: int


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


_constructor = yaml.constructor.SafeConstructor()
_PLAIN_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")


_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"


def _small_decimal(text: str) -> int | None:
    """An int-tagged scalar written as a plain decimal of at most 18 digits
    (no sign, no '_', no octal '0' prefix; under 2**63): what
    construct_yaml_int makes of it, without its machinery (a max_age in
    every tenant file). None for any other form."""
    if len(text) <= 18 and text.isascii() and text.isdigit() and text[0] != "0":
        return int(text)
    return None


def _scalar(node: yaml.ScalarNode) -> Scalar:
    text: str = node.value
    if node.tag == _STR_TAG:
        return text  # what SafeConstructor.construct_yaml_str returns
    if node.tag == _INT_TAG:
        number = _small_decimal(text)
        if number is not None:
            return number
    try:
        value = _constructor.construct_object(node, deep=True)  # type: ignore[no-untyped-call]
    except yaml.YAMLError as exc:
        raise _Refused(node.start_mark.line + 1, f"cannot read value: {exc}") from None
    except (ValueError, OverflowError) as exc:
        # PyYAML lets these out for values that look like a type but are not
        # one: an integer of 5,000 digits, a date with month 13.
        reason = str(exc).split(";")[0]
        raise _Refused(node.start_mark.line + 1, f"cannot read value: {reason}") from None
    finally:
        # construct_object remembers every node it built (for aliases, which
        # are refused anyway): forget it, or a process that reads 100,000
        # files keeps every node of every one of them.
        _constructor.constructed_objects.pop(node, None)
        _constructor.recursive_objects.pop(node, None)
    # A hex or binary literal may be any size; written out in decimal (in
    # an error message) one of 4,300 digits or more raises ValueError.
    if isinstance(value, int) and value.bit_length() > 64:
        raise _Refused(node.start_mark.line + 1, "cannot read value: number too large")
    return value  # type: ignore[no-any-return]


def _check_depth(text: str) -> None:
    """Refuse collections nested deeper than ``MAX_DEPTH``.

    libyaml's composer recurses once per level in C: a file of 200,000
    ``[`` overflows the stack and kills the process (the gunicorn master
    on a reload). The event stream is flat, so look at it first.
    """
    # Every collection starts at one of these characters ('[', '{', or the
    # indicators '-', ':' and '?'), so a text with no more of them than
    # MAX_DEPTH cannot nest deeper. Most files pass here: the event pass
    # below costs as much as parsing the file.
    if sum(map(text.count, "[{-:?")) <= MAX_DEPTH:
        return
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Refused(
                    event.start_mark.line + 1,
                    f"lists and mappings nested more than {MAX_DEPTH} deep",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _walk(node: yaml.Node, line: int, seen: set[int]) -> Node:
    # The composer hands back the very same node object for every alias of an
    # anchor, so a node met twice is an alias: refuse it before it can expand.
    if id(node) in seen:
        raise _Refused(line, "YAML anchors and aliases are not allowed")
    seen.add(id(node))
    kind = type(node)  # the composer makes exactly these three classes
    if kind is yaml.ScalarNode:
        assert isinstance(node, yaml.ScalarNode)  # for mypy: type() does not narrow
        return Node(_scalar(node), line)
    if node.tag not in _PLAIN_TAGS:
        # '!!python/object/apply:...', '!!set', '!!omap': never a list or
        # mapping in disguise (scalars with such tags fail in _scalar).
        raise _Refused(node.start_mark.line + 1, f"YAML tag {node.tag!r} is not allowed")
    if kind is yaml.SequenceNode:
        return Node([_walk(item, item.start_mark.line + 1, seen) for item in node.value], line)
    if kind is yaml.MappingNode:
        entries: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if type(key_node) is not yaml.ScalarNode or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                raise _Refused(key_line, f"keys must be plain text (got {shown!r})")
            key = key_node.value
            if key in entries:
                raise _Refused(
                    key_line, f"duplicate key '{key}' (first on line {entries[key].line})"
                )
            entries[key] = _walk(value_node, key_line, seen)
        return Node(entries, line)
    raise _Refused(node.start_mark.line + 1, "unsupported YAML node")  # pragma: no cover


def read_limited(path: Path | str, max_bytes: int) -> bytes | Problem:
    """The file's bytes, or a problem if it cannot be read or is too large."""
    try:
        # O_NONBLOCK: a FIFO named like a tenant file would block open()
        # forever; it opens at once and is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):  # what reading it would say
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(info.st_mode):
                return Problem(str(path), 0, "not a regular file")
            size = info.st_size
            if size > max_bytes:
                return Problem(str(path), 0, f"file is {size} bytes; the limit is {max_bytes}")
            data = _read_upto(fd, size, max_bytes + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        return Problem(str(path), 0, f"cannot read: {exc.strerror or exc}")
    if len(data) > max_bytes:  # grew while we looked
        return Problem(str(path), 0, f"file is over the limit of {max_bytes} bytes")
    return data


def _read_upto(fd: int, size: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a regular file of ``size`` bytes (as fstat
    said). One read of ``size + 1`` bytes: a buffer of ``limit`` bytes for
    every small file costs more than the read itself, and the extra byte
    shows a file that grew since."""
    data = os.read(fd, min(size + 1, limit))
    if len(data) <= size:  # a short read of a regular file: its end
        return data
    parts = [data]
    have = len(data)
    while have < limit and (more := os.read(fd, limit - have)):
        parts.append(more)
        have += len(more)
    return b"".join(parts)


# What ``plain_mapping`` gives for a value.
Plain = str | int | list[str]


def plain_mapping(data: bytes) -> dict[str, Plain] | None:
    """The entries of ``data`` if it is a mapping of the plainest kind, for
    readers that can do without lines while nothing is wrong: text keys,
    each value text, a whole number of at most 18 digits or a list of text.
    ``None`` for anything else, including all that ``parse_mapping``
    refuses: read the file with ``parse_mapping`` then, which says what and
    where. (Most tenant files are of this kind; reading them without
    ``Node`` trees takes a third less time.)"""
    if data.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # '&': an anchor, the only way to a node met twice (an alias); '!': a
    # tag. Without them every value is a node of its own, plainly resolved.
    # (Either in a quoted text only costs the slower reader.) The count is
    # the depth bound of ``_check_depth``.
    if "\t" in text or "&" in text or "!" in text or sum(map(text.count, "[{-:?")) > MAX_DEPTH:
        return None
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    if type(root) is not yaml.MappingNode:
        return None
    entries: dict[str, Plain] = {}
    for key_node, value_node in root.value:
        if type(key_node) is not yaml.ScalarNode or key_node.tag != _STR_TAG:
            return None
        key = key_node.value
        if key in entries:
            return None
        value = _plain_value(value_node)
        if value is None:
            return None
        entries[key] = value
    return entries


def _plain_value(node: yaml.Node) -> Plain | None:
    kind = type(node)
    if kind is yaml.ScalarNode:
        if node.tag == _STR_TAG:
            text: str = node.value
            return text
        if node.tag == _INT_TAG:
            return _small_decimal(node.value)
        return None
    if kind is yaml.SequenceNode:
        items: list[str] = []
        for item in node.value:
            if type(item) is not yaml.ScalarNode or item.tag != _STR_TAG:
                return None
            items.append(item.value)
        return items
    return None


def parse_mapping(path: Path | str, data: bytes) -> tuple[dict[str, Node] | None, list[Problem]]:
    """Parse ``data`` (the bytes of ``path``) as one YAML mapping.

    Returns the entries, or ``None`` with the problems that stopped it.
    """
    where = str(path)
    if data.startswith(b"\xef\xbb\xbf"):
        return None, [
            Problem(where, 1, "file starts with a byte order mark; save it as UTF-8 without BOM")
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return None, [Problem(where, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")]
    tab_lines = (
        [n for n, line in enumerate(text.split("\n"), 1) if "\t" in line] if "\t" in text else []
    )
    if tab_lines:
        return None, [
            Problem(where, n, "tab character; indent and separate with spaces")
            for n in tab_lines[:10]
        ]
    try:
        _check_depth(text)
        root = yaml.compose(text, Loader=_Loader)
    except _Refused as exc:
        return None, [Problem(where, exc.line, exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # At the end of the file libyaml points past the last line.
        line = max(1, min(line, len(text.splitlines())))
        detail = exc.problem or exc.context or "syntax error"
        return None, [Problem(where, line, f"YAML syntax: {detail}")]
    except yaml.reader.ReaderError as exc:
        # libyaml counts the position in bytes of UTF-8, PyYAML in characters.
        if _Loader.__name__.startswith("C"):
            line = data.count(b"\n", 0, exc.position) + 1
        else:  # pragma: no cover - depends on how PyYAML was built
            line = text.count("\n", 0, exc.position) + 1
        return None, [
            Problem(where, line, f"YAML syntax: character {exc.character!r} is not allowed")
        ]
    except yaml.YAMLError as exc:
        return None, [Problem(where, 0, f"YAML syntax: {exc}")]
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return None, [Problem(where, 1, "file is empty; expected a mapping of settings")]
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        return None, [
            Problem(where, root.start_mark.line + 1, f"expected a mapping of settings, got {kind}")
        ]
    try:
        tree = _walk(root, root.start_mark.line + 1, set())
    except _Refused as exc:
        return None, [Problem(where, exc.line, exc.message)]
    assert isinstance(tree.value, dict)
    return tree.value, []
