"""Problems found in the user's files, and the one exception family that carries them.

Every mistake a user can write (config, campaign file, audience CSV, command-line arguments) is
reported as a `Problem` and rendered at the CLI edge as ``FILE:LINE: field: message``; nothing a
user writes may surface as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in a user's file, located as precisely as we can."""

    file: Path | None
    line: int | None
    field: str | None
    message: str
    severity: Severity = "error"

    def render(self) -> str:
        """``FILE:LINE: field: message``; warnings are prefixed with ``warning:``."""
        where = ""
        if self.file is not None:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}{prefix}{field}{self.message}"

    @property
    def is_error(self) -> bool:
        """True for errors, False for warnings."""
        return self.severity == "error"


class UserError(ValueError):
    """The user's files or arguments are wrong; carries every problem found, never a secret."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))

    @classmethod
    def single(
        cls, message: str, *, file: Path | None = None, line: int | None = None,
        field: str | None = None,
    ) -> UserError:
        """Build an error that carries one problem."""
        return cls([Problem(file, line, field, message)])


class ConfigError(UserError):
    """The daemon config (or the credentials it needs) is wrong."""


class CampaignError(UserError):
    """A campaign file or its audience CSV is wrong."""
