"""Which time zones a recipient lives in: their own column, else their phone number, else the
site's default (SPEC §11.4).

The phone's zones come from libphonenumber's time-zone data (the `phonenumbers` package). Its
public look-up parses and classifies every number (~30 µs), too slow for a million rows, so the
slow part (is the number geographic, and if not, which zones does its country have?) is cached
by the country code and the next three digits (what decides a number's type in the plans that
span zones; the exchange too for a Caribbean area code), and the geographic look-up itself is
the data's longest-prefix match, cached by six digits wherever the data has nothing longer
under them.
"""

from __future__ import annotations

from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneNumberType,
    number_type,
    parse,
)
from phonenumbers.phonenumberutil import is_number_type_geographical
from phonenumbers.timezone import time_zones_for_number
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

from scheduler.window import zone_group

UNKNOWN_ZONE = "Etc/Unknown"  # libphonenumber's answer when it cannot tell
_GEOGRAPHIC = ""  # cache value: look the zones up by the number's longest known prefix
_UNCLASSIFIED = "?"  # not cached: an invalid number says nothing of others with its prefix
_MISSES_TRUSTED = 16  # ... until this many of a prefix were: then the prefix gets the default
#: national digits after the country code that decide a number's type (mobile, fixed line,
#: toll-free…) in the numbering plans that span several zones: +1 area codes, +7 9xx, +61 4xx
_TYPE_DIGITS = 3
#: ... except in the North American plan outside the US and Canada, where a Caribbean
#: island's mobiles and fixed lines share an area code: there the exchange decides too
_BY_EXCHANGE = "#"  # cache value of such an area code: look at area code and exchange
_EXCHANGE_KEY = 8  # "+1", area code and exchange
#: North American types that a whole area code shares: the US and Canada (one pattern for
#: fixed lines and mobiles), toll-free and premium area codes
_AREA_WIDE = frozenset({
    PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE,
})
_DEEP_DIGITS = 6
#: six-digit prefixes under which the data has longer ones (NANP exchanges, some of Brazil…):
#: only there does the rest of the number matter
_DEEP = frozenset(prefix[:_DEEP_DIGITS] for prefix in TIMEZONE_DATA
                  if len(prefix) > _DEEP_DIGITS)


class ZoneFinder:
    """The zone group (`scheduler.window.zone_group`) of each recipient; cached by prefix."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._kinds: dict[str, str] = {}  # country code + 3 digits -> kind or zone group
        self._groups: dict[tuple[str, ...], str] = {}
        self._misses: dict[str, int] = {}
        self._geographic: dict[str, str] = {}  # six digits -> zone group, when they decide

    def of_phone(self, phone: str) -> str:
        """The zones of an E.164 ``phone`` (``+`` and digits), the default when unknown."""
        key = phone[:_KEY_LENGTHS.get(phone[1:4], 7)]
        kind = self._kinds.get(key)
        if kind == _BY_EXCHANGE:
            key = phone[:_EXCHANGE_KEY]
            kind = self._kinds.get(key)
        if kind is None:
            kind, shared = self._classify(phone)
            if not shared:  # the area code's other exchanges may be of another type
                self._kinds[key] = _BY_EXCHANGE
                key = phone[:_EXCHANGE_KEY]
            if kind is _UNCLASSIFIED:
                # a number libphonenumber does not know says little of its neighbours, but a
                # prefix of nothing else (a test range) must not cost a parse per number
                misses = self._misses[key] = self._misses.get(key, 0) + 1
                kind = self.default
                if misses >= _MISSES_TRUSTED:
                    self._kinds[key] = kind
            else:
                self._kinds[key] = kind
        return kind if kind != _GEOGRAPHIC else self._by_prefix(phone)

    def _by_prefix(self, phone: str) -> str:
        """The zones of the longest prefix of ``phone`` in the data (geographic numbers)."""
        six = phone[1:1 + _DEEP_DIGITS]
        if six not in _DEEP:
            group = self._geographic.get(six)
            if group is None:
                group = self._geographic[six] = self._longest(six)
            return group
        return self._longest(phone[1:1 + TIMEZONE_LONGEST_PREFIX])

    def _longest(self, digits: str) -> str:
        for size in range(len(digits), 0, -1):
            names = TIMEZONE_DATA.get(digits[:size])
            if names is not None:
                return self._group(names)
        return self.default

    def _classify(self, phone: str) -> tuple[str, bool]:
        """`_GEOGRAPHIC` when the number's own prefix tells its zones, else the zone group of
        its whole country (a mobile in most countries), or `_UNCLASSIFIED`; and whether the
        answer holds for its whole cache key (False: a North American number outside the US
        and Canada, whose type its exchange decides)."""
        try:
            number = parse(phone)
        except NumberParseException:
            return _UNCLASSIFIED, True
        kind = number_type(number)
        if kind == PhoneNumberType.UNKNOWN or number.country_code is None:
            return _UNCLASSIFIED, True
        shared = number.country_code != 1 or kind in _AREA_WIDE
        if is_number_type_geographical(kind, number.country_code):
            return _GEOGRAPHIC, shared
        return self._group(time_zones_for_number(number)), shared

    def _group(self, names: tuple[str, ...] | list[str]) -> str:
        key = tuple(names)
        group = self._groups.get(key)
        if group is None:
            known = [name for name in names if name != UNKNOWN_ZONE]
            group = self._groups[key] = zone_group(known) if known else self.default
        return group


def _key_lengths() -> dict[str, int]:
    """For every first three digits of a number: how long its "+", country code and next
    three digits are (country codes have one to three digits and none is a prefix of another)."""
    lengths = {}
    for number in range(1000):
        digits = f"{number:03d}"
        size = next((n for n in (1, 2, 3) if int(digits[:n]) in COUNTRY_CODE_TO_REGION_CODE), 3)
        lengths[digits] = 1 + size + _TYPE_DIGITS
    return lengths


_KEY_LENGTHS = _key_lengths()
