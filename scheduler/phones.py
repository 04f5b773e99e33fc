"""Phone numbers: the one E.164 rule of the API (SPEC §3), shared by every module that checks it.

Use ``E164.fullmatch(text)``: a "+", a first digit 1-9, then 6 to 14 more digits, nothing else.
Only ASCII digits count (``\\d`` would also take Arabic-Indic and other Unicode digits).
"""

from __future__ import annotations

import re
from typing import Final

#: the API's format rule (SPEC §3); ASCII digits only, the whole value (call ``fullmatch``)
E164: Final = re.compile(r"\+[1-9][0-9]{6,14}")
#: the number the error messages show as an example
EXAMPLE_PHONE: Final = "+380501234567"
#: what people and spreadsheets put between a phone's digits: spaces, brackets, dots, dashes
SEPARATORS: Final = re.compile(r"[\s().\-/]")


def normalise(text: str) -> str | None:
    """``text`` as the E.164 number the journal stores (separators dropped, a leading ``00``
    or a missing ``+`` read as the international prefix), or None when it is not one."""
    digits = SEPARATORS.sub("", text.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif not digits.startswith("+"):
        digits = "+" + digits
    return digits if E164.fullmatch(digits) else None
