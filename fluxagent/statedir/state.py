"""Small atomic state files in the state dir: JSON helpers, `seq`, `schedule.json`.

The files: docs/ARCHITECTURE.md, "State directory".

Every write goes through fsutil.atomic_write (temp file, fsync, rename, fsync dir), so a kill -9
leaves either the old or the new file, never a mix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fluxagent.errors import StateError
from fluxagent.kinds import SCHEDULED
from fluxagent.statedir import fsutil

SEQ_FILE = "seq"
SCHEDULE_FILE = "schedule.json"
# Jump this far past the highest seq still on record when the seq file is lost: a message can
# have left the machine without a surviving record (e.g. its ledger line was torn by kill -9),
# and a gap in seq is harmless while reuse is a protocol violation.
SEQ_RECOVERY_GAP = 1000


class _Corrupt(ValueError):
    """The file exists and was read, but its content is not what we wrote."""


def read_private(path: Path) -> bytes:
    """Return the bytes of path, refusing a symbolic link there (ELOOP); raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = read_private(path)
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError
        raise _Corrupt(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise _Corrupt(f"{path} does not hold a JSON object")
    return obj


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object in path, None if absent; raises StateError if unreadable/corrupt."""
    try:
        return _load(path)
    except _Corrupt as exc:
        raise StateError(str(exc), hint=f"move {path} aside; fluxagent recreates it") from None
    except OSError as exc:
        raise StateError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="check that the state directory belongs to the user fluxagent runs as",
        ) from exc


def encode_json(obj: Any) -> bytes:
    """Return obj as compact JSON with sorted keys and a trailing newline."""
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode() + b"\n"


def write_json(path: Path, obj: Any, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Atomically write obj as compact sorted JSON to path with exactly mode (and owner); raises StateError."""
    try:
        fsutil.atomic_write(path, encode_json(obj), mode=mode, owner=owner)
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check free space and permissions of the state directory",
        ) from exc


class Seq:
    """The message counter in `<state_dir>/seq`: persisted before a message is sealed, never reused.

    Decision on a lost or corrupt seq file: without a `floor` the counter cannot be trusted, so
    reserve() raises StateError instead of restarting at 1 (reuse would be a protocol violation).
    With `floor` (the caller's highest seq still on record: spool entries and ledger) the counter
    resumes at floor + SEQ_RECOVERY_GAP, and `recovered` says why, for the caller to log. A missing
    file with floor 0 is simply a fresh instance. Every reserve() also honours floor, so seq never
    drops below a seq already on record.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SEQ_FILE
        self.recovered: str | None = None

    def _read(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return 0
        except UnicodeDecodeError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        text = text.strip()
        if not text.isdigit() or len(text) > 19:
            return None
        return int(text)

    def _corrupt(self) -> StateError:
        return StateError(
            f"{self.path} is corrupt; the message counter must never be reused",
            hint="start the agent: it recovers the counter from the spool and the ledger",
        )

    def last(self) -> int:
        """Return the last reserved seq (0 if the file is absent); raises StateError if corrupt."""
        value = self._read()
        if value is None:
            raise self._corrupt()
        return value

    def peek(self, floor: int | None = None) -> int:
        """Return the seq reserve(floor) would return now, persisting nothing; raises StateError."""
        value = self._read()
        if value is None:
            if floor is None:
                raise self._corrupt()
            value = floor + SEQ_RECOVERY_GAP
        elif value == 0 and floor:
            value = floor + SEQ_RECOVERY_GAP
        return max(value, floor or 0) + 1

    def reserve(self, floor: int | None = None) -> int:
        """Persist and return the next seq (> last, > floor); raises StateError (see class doc)."""
        value = self._read()
        if value is None:
            if floor is None:
                raise self._corrupt()
            value = floor + SEQ_RECOVERY_GAP
            self.recovered = f"{self.path} was corrupt; resumed after seq {floor} + gap"
        elif value == 0 and floor:
            value = floor + SEQ_RECOVERY_GAP
            self.recovered = f"{self.path} was missing although seq {floor} is on record"
        nxt = max(value, floor or 0) + 1
        try:
            fsutil.atomic_write(self.path, b"%d\n" % nxt, mode=0o600)
        except OSError as exc:
            raise StateError(
                f"cannot persist seq to {self.path}: {exc.strerror or exc}",
                hint="check free space and permissions of the state directory",
            ) from exc
        return nxt


@dataclass(frozen=True)
class KindSchedule:
    """Timer state of one message kind: unix seconds or None, and the failure streak."""

    last_sent: int | None = None
    next_due: int | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    server_interval: int | None = None  # the interval the server asked for at the last delivery


@dataclass(frozen=True)
class Schedule:
    """Persisted timers of license, heartbeat and digest plus the last acknowledged digest root.

    `reset_reason` is not persisted: load_schedule sets it when a corrupt file was replaced by a
    fresh schedule (which only means sending sooner), so the caller can log it.
    """

    license: KindSchedule = field(default_factory=KindSchedule)
    heartbeat: KindSchedule = field(default_factory=KindSchedule)
    digest: KindSchedule = field(default_factory=KindSchedule)
    last_acked_root: str | None = None
    reset_reason: str | None = field(default=None, compare=False)
    # when the last full digest was spooled: a full one the server asks for (need_full, a refused
    # delta) comes at most an hour after it
    last_full_at: int | None = None

    def kind(self, name: str) -> KindSchedule:
        """Return the KindSchedule of name ("license", "heartbeat" or "digest"); raises KeyError."""
        if name not in SCHEDULED:
            raise KeyError(name)
        ks: KindSchedule = getattr(self, name)
        return ks

    def with_kind(self, name: str, ks: KindSchedule) -> Schedule:
        """Return a copy with the schedule of kind name replaced; raises KeyError."""
        parts = {k: ks if k == name else self.kind(k) for k in SCHEDULED}
        self.kind(name)
        return replace(self, license=parts["license"], heartbeat=parts["heartbeat"], digest=parts["digest"],
                       reset_reason=None)


def _opt_int(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return v
    raise _Corrupt(f"{key} is not a non-negative integer or null")


def _kind_from(obj: Any) -> KindSchedule:
    if not isinstance(obj, dict):
        raise _Corrupt("kind entry is not an object")
    err = obj.get("last_error")
    if err is not None and not isinstance(err, str):
        raise _Corrupt("last_error is not a string or null")
    return KindSchedule(
        last_sent=_opt_int(obj, "last_sent"),
        next_due=_opt_int(obj, "next_due"),
        consecutive_failures=_opt_int(obj, "consecutive_failures") or 0,
        last_error=err,
        server_interval=_opt_int(obj, "server_interval"),
    )


def clamp_schedule(schedule: Schedule, now: float, spans: Mapping[str, float]) -> tuple[Schedule, list[str]]:
    """Return schedule with impossible timers made due at now, and the kinds so clamped. Pure.

    spans: per kind, its interval plus jitter. No run sets a timer further ahead than that plus
    the interval the server last asked for; a later one was set while the clock ran ahead (a
    jump, later corrected), and kept as is it would silence the kind for as long as the jump.
    Due at once, the next delivery also brings the trusted server time that corrects the
    license state (license/state.py, `seen_after`).
    """
    clamped: list[str] = []
    for name in SCHEDULED:
        ks = schedule.kind(name)
        limit = now + spans.get(name, 0.0) + (ks.server_interval or 0)
        if ks.next_due is not None and ks.next_due > limit:
            schedule = schedule.with_kind(name, replace(ks, next_due=int(now)))
            clamped.append(name)
    return schedule, clamped


def load_schedule(state_dir: Path) -> Schedule:
    """Return the schedule in state_dir (fresh when absent or corrupt, see reset_reason).

    Raises StateError only when the file exists but cannot be read at all (permissions, I/O).
    """
    path = state_dir / SCHEDULE_FILE
    try:
        obj = _load(path)
        if obj is None:
            return Schedule()
        kinds = {k: _kind_from(obj.get(k, {})) for k in SCHEDULED}
        root = obj.get("last_acked_root")
        if root is not None and not isinstance(root, str):
            raise _Corrupt("last_acked_root is not a string or null")
        return Schedule(kinds["license"], kinds["heartbeat"], kinds["digest"], root,
                        last_full_at=_opt_int(obj, "last_full_at"))
    except _Corrupt as exc:
        return Schedule(reset_reason=f"{path}: {exc}; started a fresh schedule")
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc


def save_schedule(state_dir: Path, schedule: Schedule) -> None:
    """Atomically write schedule to `<state_dir>/schedule.json`; raises StateError."""
    obj: dict[str, Any] = {"v": 1, "last_acked_root": schedule.last_acked_root}
    if schedule.last_full_at is not None:
        obj["last_full_at"] = schedule.last_full_at
    for name in SCHEDULED:
        ks = schedule.kind(name)
        obj[name] = {
            "last_sent": ks.last_sent,
            "next_due": ks.next_due,
            "consecutive_failures": ks.consecutive_failures,
            "last_error": ks.last_error,
            "server_interval": ks.server_interval,
        }
    write_json(state_dir / SCHEDULE_FILE, obj)


SOURCE_ERRORS_FILE = "source-errors.json"


def load_source_errors(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Return {kind: {error, code, since}} of kinds not sent because a source failed ({} if none or corrupt)."""
    try:
        obj = _load(state_dir / SOURCE_ERRORS_FILE) or {}
    except (_Corrupt, OSError):
        return {}
    kinds = obj.get("kinds")
    return {k: v for k, v in kinds.items() if isinstance(v, dict)} if isinstance(kinds, dict) else {}


def save_source_errors(state_dir: Path, errors: dict[str, dict[str, Any]]) -> None:
    """Atomically record the kinds a failing source keeps from being sent, for `status`; raises StateError."""
    write_json(state_dir / SOURCE_ERRORS_FILE, {"v": 1, "kinds": errors}, mode=0o640)


BACKOFF_FILE = "backoff.json"


@dataclass(frozen=True)
class Backoff:
    """Where delivery backoff stands, kept across worker processes: the failure streak, when to retry,
    and the outage bookkeeping (one warning when it starts, then a summary now and then)."""

    failures: int = 0
    retry_at: float = 0.0
    outage_since: float | None = None
    outage_summary_at: float = 0.0


def _opt_number(obj: dict[str, Any], key: str, default: float | None) -> float | None:
    v = obj.get(key, default)
    if v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v >= 0):
        return None if v is None else float(v)
    raise _Corrupt(f"{key} is not a non-negative number or null")


def load_backoff(state_dir: Path) -> Backoff:
    """Return the persisted backoff position (a fresh one when absent or corrupt: that only means sooner)."""
    try:
        obj = _load(state_dir / BACKOFF_FILE)
        if obj is None:
            return Backoff()
        return Backoff(failures=int(_opt_number(obj, "failures", 0) or 0),
                       retry_at=_opt_number(obj, "retry_at", 0.0) or 0.0,
                       outage_since=_opt_number(obj, "outage_since", None),
                       outage_summary_at=_opt_number(obj, "outage_summary_at", 0.0) or 0.0)
    except (_Corrupt, OSError):
        return Backoff()


def save_backoff(state_dir: Path, b: Backoff) -> None:
    """Atomically write the backoff position to `<state_dir>/backoff.json`; raises StateError."""
    write_json(state_dir / BACKOFF_FILE, {"v": 1, "failures": b.failures, "retry_at": b.retry_at,
                                          "outage_since": b.outage_since, "outage_summary_at": b.outage_summary_at})


RETRY_AFTER_FILE = "retry-after.json"


def load_retry_after(state_dir: Path) -> float:
    """Return until when the server asked us to wait (Unix time), 0.0 when it did not or the file is bad."""
    try:
        obj = _load(state_dir / RETRY_AFTER_FILE) or {}
    except (_Corrupt, OSError):
        return 0.0
    until = obj.get("until")
    return float(until) if isinstance(until, int | float) and not isinstance(until, bool) and until > 0 else 0.0


def save_retry_after(state_dir: Path, until: float) -> None:
    """Record until when the server asked us to wait (atomically), or forget it (until 0); raises StateError."""
    path = state_dir / RETRY_AFTER_FILE
    if until > 0:
        write_json(path, {"v": 1, "until": until})
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StateError(f"cannot remove {path}: {exc.strerror or exc}") from exc
