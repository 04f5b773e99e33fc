"""Message text personalisation: ``{column}`` placeholders, ``{{`` and ``}}`` for literal braces."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_HOW = "placeholders are {column}; write {{ and }} for literal braces"


class TemplateError(ValueError):
    """The text's braces do not form valid placeholders: every problem found, each with how to
    fix it, and the placeholders that are fine (so they can still be checked against the CSV)."""

    def __init__(self, messages: Iterable[str], fields: frozenset[str]) -> None:
        self.messages = list(messages)
        self.fields = fields
        super().__init__("; ".join(self.messages))


class Template:
    """A message text compiled once, rendered per audience row."""

    __slots__ = ("_parts", "fields", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts, problems = _scan(source)
        self._parts = tuple(parts)
        self.fields = frozenset(name for _, name in parts if name is not None)
        if problems:
            raise TemplateError(problems, self.fields)

    def render(self, row: Mapping[str, str]) -> str:
        """The text with each ``{column}`` replaced by the row's value."""
        if not self.fields:
            return "".join(literal for literal, _ in self._parts)
        return "".join(
            literal if name is None else literal + row[name] for literal, name in self._parts
        )


def _scan(source: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``(literal, placeholder)`` parts of ``source`` and every problem with its braces.

    For a valid text the parts are those of `string.Formatter.parse` (the audience reader's fast
    renderer relies on it); unlike it, scanning goes on after a problem, so one mistake does not
    hide the next.
    """
    parts: list[tuple[str, str | None]] = []
    problems: list[str] = []
    literal: list[str] = []
    at = 0
    while at < len(source):
        char = source[at]
        if source.startswith(("{{", "}}"), at):
            literal.append(char)
            at += 2
        elif char == "{":
            end, nested = source.find("}", at + 1), source.find("{", at + 1)
            if end < 0 or 0 <= nested < end:
                problems.append(f'the "{{" at character {at + 1} is never closed: {_HOW}')
                at += 1
                continue
            name = source[at + 1:end]
            problem = _placeholder_problem(name)
            if problem is None:
                parts.append(("".join(literal), name))
                literal = []
            else:
                problems.append(problem)
            at = end + 1
        elif char == "}":
            problems.append(f'the "}}" at character {at + 1} closes nothing: {_HOW}')
            at += 1
        else:
            literal.append(char)
            at += 1
    parts.append(("".join(literal), None))
    return parts, problems


def _placeholder_problem(name: str) -> str | None:
    """Why ``{name}`` is not a placeholder, or None when it is one."""
    if not name.strip():
        return f"{{{name}}} has no column name: write one between the braces, like " \
            "{first_name}, or {{ and }} for literal braces"
    if ":" in name or "!" in name:
        return f"{{{name}}} is not a placeholder: write {{column}} with a CSV column name, " \
            "or {{ and }} for literal braces"
    return None
