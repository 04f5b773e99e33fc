"""Allow `python -m scheduler`."""

from __future__ import annotations

from scheduler.cli import main

raise SystemExit(main())
