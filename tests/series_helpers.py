"""Series in daemon tests (SPEC §13.1): a daily series whose next fire is seconds away.

Cron counts in minutes and a series may not repeat within the hour, so the daemon tests use a
daily cron whose next fire is the coming minute, never a wait of hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

LEAD = 6  # seconds at least between writing the file and the occurrence's fire time


def next_minute() -> datetime:
    """The next whole minute at least `LEAD` s away (UTC)."""
    now = datetime.now(UTC)
    minute = (now + timedelta(seconds=LEAD)).replace(second=0, microsecond=0)
    return minute + timedelta(minutes=1)


def series_text(fire_at: datetime, *, audience: str = "all", paused: bool = False) -> str:
    """A daily series firing at ``fire_at``'s hour and minute (UTC)."""
    return "\n".join([
        'id = "daily"', 'from_name = "TestShop"', 'type = "promo"', 'text = "Hi {first_name}"',
        f"paused = {'true' if paused else 'false'}", "", "[repeat]",
        f'cron = "{fire_at.minute} {fire_at.hour} * * *"', 'timezone = "UTC"',
        f'audience = "{audience}"', "", "[audience]", 'csv = "audiences/daily.csv"', "",
    ])
