"""Which time zones a recipient lives in: their own column, else their phone number, else the
site's default (SPEC §11.4).

The phone's zones come from libphonenumber's time-zone data (the `phonenumbers` package). Its
public look-up parses and classifies every number (~30 µs), too slow for a million rows, so the
slow part (is the number geographic, and if not, which zones does its country have?) is cached
by the number's first six digits and length, and the geographic look-up itself is the data's
longest-prefix match, a handful of dictionary probes.
"""

from __future__ import annotations

from phonenumbers import NumberParseException, PhoneNumberType, number_type, parse
from phonenumbers.phonenumberutil import is_number_type_geographical
from phonenumbers.timezone import time_zones_for_number
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from scheduler.window import zone_group

UNKNOWN_ZONE = "Etc/Unknown"  # libphonenumber's answer when it cannot tell
_GEOGRAPHIC = ""  # cache value: look the zones up by the number's longest known prefix
_UNCLASSIFIED = "?"  # not cached: an invalid number says nothing of others with its prefix
_MISSES_TRUSTED = 16  # ... until this many of a prefix were: then the prefix gets the default
_KEY_DIGITS = 7  # "+" and the first six digits
#: six-digit prefixes under which the data has longer ones (NANP exchanges, some of Brazil…):
#: only there does the rest of the number matter
_DEEP = frozenset(prefix[:_KEY_DIGITS - 1] for prefix in TIMEZONE_DATA
                  if len(prefix) >= _KEY_DIGITS)


class ZoneFinder:
    """The zone group (`scheduler.window.zone_group`) of each recipient; cached by prefix."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._kinds: dict[tuple[str, int], str] = {}
        self._groups: dict[tuple[str, ...], str] = {}
        self._misses: dict[tuple[str, int], int] = {}

    def of_phone(self, phone: str) -> str:
        """The zones of an E.164 ``phone`` (``+`` and digits), the default when unknown."""
        key = (phone[:_KEY_DIGITS], len(phone))
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._classify(phone)
            if kind is _UNCLASSIFIED:
                # a number libphonenumber does not know says little of its neighbours, but a
                # prefix of nothing else (a test range) must not cost a parse per number
                misses = self._misses[key] = self._misses.get(key, 0) + 1
                kind = self.default
                if misses >= _MISSES_TRUSTED:
                    self._kinds[key] = kind
            else:
                self._kinds[key] = kind
        return kind if kind != _GEOGRAPHIC else self._by_prefix(phone, TIMEZONE_LONGEST_PREFIX)

    def _by_prefix(self, phone: str, longest: int) -> str:
        """The zones of the longest prefix of ``phone`` (at most ``longest`` digits) in the data."""
        for size in range(min(longest, len(phone) - 1), 0, -1):
            names = TIMEZONE_DATA.get(phone[1:1 + size])
            if names is not None:
                return self._group(names)
        return self.default

    def _classify(self, phone: str) -> str:
        """`_GEOGRAPHIC` when the rest of the number matters, else the zone group every number
        of this prefix and length gets."""
        try:
            number = parse(phone)
        except NumberParseException:
            return _UNCLASSIFIED
        kind = number_type(number)
        if kind == PhoneNumberType.UNKNOWN or number.country_code is None:
            return _UNCLASSIFIED
        if is_number_type_geographical(kind, number.country_code):
            if phone[1:_KEY_DIGITS] in _DEEP:
                return _GEOGRAPHIC
            return self._by_prefix(phone, _KEY_DIGITS - 1)
        return self._group(time_zones_for_number(number))

    def _group(self, names: tuple[str, ...] | list[str]) -> str:
        key = tuple(names)
        group = self._groups.get(key)
        if group is None:
            known = [name for name in names if name != UNKNOWN_ZONE]
            group = self._groups[key] = zone_group(known) if known else self.default
        return group
