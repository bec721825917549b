"""Typed access to the entries of a parsed YAML mapping, collecting problems.

Both the provider config and the tenant files are read through ``Fields``, so
unknown keys, missing keys and wrong types are reported the same way
everywhere: ``path:line: key: expected ... (got ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from policy_host.errors import Problem, Severity
from policy_host.read.yamlfile import Node


def _shown(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """The entries of one mapping, read key by key with their types checked."""

    def __init__(
        self,
        path: Path | str,
        entries: dict[str, Node],
        known: Sequence[str],
        problems: list[Problem],
        *,
        prefix: str = "",
    ) -> None:
        self.path = str(path)
        self.entries = entries
        self.problems = problems
        self.prefix = prefix
        for key, node in entries.items():
            if key not in known:
                import difflib  # only for a misspelt key, not on every start-up

                hint = difflib.get_close_matches(key, known, n=1)
                also = f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(known)})"
                self.error(node.line, f"unknown key '{prefix}{key}'{also}")

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def warn(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message, Severity.WARNING))

    def line(self, key: str, default: int = 1) -> int:
        node = self.entries.get(key)
        return node.line if node is not None else default

    def _node(self, key: str, required: bool, missing_line: int) -> Node | None:
        node = self.entries.get(key)
        if node is None and required:
            self.error(missing_line, f"{self.prefix}{key}: required but missing")
        return node

    def text(self, key: str, *, required: bool = False, missing_line: int = 1) -> str | None:
        node = self._node(key, required, missing_line)
        if node is None:
            return None
        if not isinstance(node.value, str) or not node.value:
            self.error(node.line, f"{self.prefix}{key}: expected text (got {_shown(node.value)})")
            return None
        return node.value

    def integer(self, key: str, *, required: bool = False, missing_line: int = 1) -> int | None:
        node = self._node(key, required, missing_line)
        if node is None:
            return None
        if isinstance(node.value, bool) or not isinstance(node.value, int):
            self.error(
                node.line, f"{self.prefix}{key}: expected a whole number (got {_shown(node.value)})"
            )
            return None
        return node.value

    def text_list(
        self, key: str, *, required: bool = False, missing_line: int = 1, allow_single: bool = False
    ) -> list[tuple[str, int]] | None:
        """A list of text items as ``(text, line)``; with ``allow_single`` a
        lone text value counts as a list of one."""
        node = self._node(key, required, missing_line)
        if node is None:
            return None
        if allow_single and isinstance(node.value, str) and node.value:
            return [(node.value, node.line)]
        if not isinstance(node.value, list):
            self.error(node.line, f"{self.prefix}{key}: expected a list (got {_shown(node.value)})")
            return None
        items: list[tuple[str, int]] = []
        for item in node.value:
            if not isinstance(item.value, str) or not item.value:
                self.error(
                    item.line, f"{self.prefix}{key}: expected text items (got {_shown(item.value)})"
                )
            else:
                items.append((item.value, item.line))
        return items

    def mapping(self, key: str, known: Sequence[str]) -> Fields | None:
        node = self.entries.get(key)
        if node is None:
            return Fields(self.path, {}, known, self.problems, prefix=f"{self.prefix}{key}.")
        if not isinstance(node.value, dict):
            self.error(
                node.line, f"{self.prefix}{key}: expected a mapping (got {_shown(node.value)})"
            )
            return None
        return Fields(self.path, node.value, known, self.problems, prefix=f"{self.prefix}{key}.")
