"""Times shown to people, formatted one way everywhere: UTC stamps, ISO 8601, dates and durations."""

from __future__ import annotations

import time


def utc_stamp(ts: float) -> str:
    """Return a Unix time as "2026-11-22 15:30:00Z" (status, log, license reasons)."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def utc_iso(ts: float) -> str:
    """Return a Unix time as ISO 8601 UTC, "2026-11-22T15:30:00Z" (machine-read fields, file names)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def utc_date(ts: float | None) -> str:
    """Return the UTC date of a Unix time ("2026-11-22"), or "never" for None/0."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts)) if ts else "never"


def duration(seconds: float) -> str:
    """Return a length of time, sign dropped, in its two largest units: "3d4h", "2h5m", "7m", "42s"."""
    s = int(abs(seconds))
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def relative(ts: object, now: int) -> str:
    """Return "<utc stamp> (in 2h5m)" or "<utc stamp> (3d4h ago)"; "never" when ts is not an int."""
    if not isinstance(ts, int):
        return "never"
    d = ts - now
    return f"{utc_stamp(ts)} ({'in ' if d >= 0 else ''}{duration(d)}{'' if d >= 0 else ' ago'})"
