"""The one exception root, and the problems that validation collects."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with an input file, located for a person to fix.

    Rendered as ``path:line: message`` (like compilers and ``nginx -t``), with
    ``warning:`` before the message for warnings.
    """

    path: str
    line: int
    message: str
    severity: Severity = Severity.ERROR

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        prefix = "" if self.is_error else "warning: "
        return f"{where}: {prefix}{self.message}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "path": self.path,
            "line": self.line,
            "severity": self.severity.value,
            "message": self.message,
        }


class PolicyHostError(Exception):
    """Root of every error policy-host raises on purpose.

    The CLI shows ``str(error)`` as one line; anything else is a bug and its
    traceback goes to the log (or the terminal with ``--debug``).
    """

    exit_status = 3


class ConfigError(PolicyHostError):
    """An input file (provider config or tenant) cannot be used."""

    exit_status = 2

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def at(cls, path: Path | str, line: int, message: str) -> ConfigError:
        return cls(Problem(str(path), line, message))


class ServerError(PolicyHostError):
    """The running server could not be reached or told to reload."""
