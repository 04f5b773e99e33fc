"""Message text personalisation: ``{column}`` placeholders, ``{{`` and ``}}`` for literal braces."""

from __future__ import annotations

import string
from collections.abc import Mapping


class TemplateError(ValueError):
    """The text's braces do not form valid placeholders; the message says how to fix it."""


class Template:
    """A message text compiled once, rendered per audience row."""

    __slots__ = ("_parts", "fields", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(source))
        except ValueError as exc:
            raise TemplateError(
                f"{exc}: placeholders are {{column}}; write {{{{ and }}}} for literal braces"
            ) from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (spec or conversion or not name.strip()):
                shown = "{" + name + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise TemplateError(
                    f"{shown} is not a placeholder: write {{column}} with a CSV column name, "
                    "or {{ and }} for literal braces"
                )
            parts.append((literal, name))
        self._parts = tuple(parts)
        self.fields = frozenset(name for _, name in parts if name is not None)

    def render(self, row: Mapping[str, str]) -> str:
        """The text with each ``{column}`` replaced by the row's value."""
        if not self.fields:
            return "".join(literal for literal, _ in self._parts)
        return "".join(
            literal if name is None else literal + row[name] for literal, name in self._parts
        )
