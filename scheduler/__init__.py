"""cascade-scheduler: schedule messaging campaigns through the SMSBAT Cascade API."""

from __future__ import annotations

__version__ = "0.1.0"
