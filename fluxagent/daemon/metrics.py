"""`metrics.prom` in node_exporter's textfile-collector format, rendered from the status dict.

The metrics are listed in docs/OPERATOR.md, "Monitoring".

`render` is pure (status dict in, text out); `MetricsWriter` is the shell the daemon calls after
each loop step and `run --once` after its cycle: it writes the file atomically and logs a failure
once per streak, never raising. `DeliveryCounts` keeps the per kind and outcome counters: counted
from the ledger lines appended since the last count and persisted in the state directory, so they
only ever grow (the ledger drops its oldest segments, a restart starts a new process).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluxagent import __version__
from fluxagent.config import Config
from fluxagent.errors import FluxError
from fluxagent.kinds import LICENSE_STATES
from fluxagent.statedir import state
from fluxagent.statedir.fsutil import atomic_write
from fluxagent.statedir.ledger import Ledger

if TYPE_CHECKING:
    from fluxagent.status import LastDelivered

METRICS_FILE = "metrics.prom"
COUNTS_FILE = "delivery-counts.json"
COUNTS_VERSION = 1
PREFIX = "fluxagent"
# every state a gauge can report: the protocol's license states, plus "unknown" before the first receipt
STATES = (*LICENSE_STATES, "unknown")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return "0"


def _family(name: str, kind: str, help_text: str,
            samples: Iterable[tuple[Mapping[str, str], Any]]) -> list[str]:
    """Return the HELP, TYPE and sample lines of one metric family."""
    full = f"{PREFIX}_{name}"
    lines = [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
    for labels, value in samples:
        tag = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        lines.append(f"{full}{{{tag}}} {_number(value)}" if tag else f"{full} {_number(value)}")
    return lines


def render(status: Mapping[str, Any], *, build: Mapping[str, str] | None = None,
           deliveries: Mapping[str, Mapping[str, int]] | None = None) -> str:
    """Return the textfile-collector text for a `status.collect_status` dict (pure).

    build: the labels of fluxagent_build_info (version, python); deliveries: {kind: {outcome: count}}.
    """
    kinds: Mapping[str, Mapping[str, Any]] = status.get("kinds", {})
    spool: Mapping[str, Any] = status.get("spool", {})
    lic: Mapping[str, Any] = status.get("license", {})
    state = lic.get("state") if lic.get("state") in STATES else "unknown"
    out: list[str] = []
    if build is not None:
        out += _family("build_info", "gauge", "Always 1; the labels say which fluxagent and Python run.",
                       [(dict(build), 1)])
    if deliveries is not None:
        out += _family("deliveries_total", "counter",
                       "Ledger entries by message kind and outcome (delivered, retry, rejected, failed, dropped, "
                       "superseded, ...), counted since the state directory was created.",
                       (({"kind": k, "outcome": o}, n) for k in sorted(deliveries)
                        for o, n in sorted(deliveries[k].items())))
    out += _family("last_success_timestamp_seconds", "gauge",
                   "Unix time of the last delivered message of each kind (0: never delivered).",
                   (({"kind": k}, v.get("last_delivered") or 0) for k, v in kinds.items()))
    out += _family("next_due_timestamp_seconds", "gauge",
                   "Unix time the next message of each kind is due (0: not scheduled yet).",
                   (({"kind": k}, v.get("next_due") or 0) for k, v in kinds.items()))
    out += _family("consecutive_failures", "gauge",
                   "Delivery attempts of each kind that failed in a row since the last success.",
                   (({"kind": k}, v.get("consecutive_failures") or 0) for k, v in kinds.items()))
    out += _family("spool_messages", "gauge", "Messages waiting in the spool to be sent.",
                   [({}, spool.get("depth", 0))])
    out += _family("spool_bytes", "gauge", "Bytes of the messages waiting in the spool.",
                   [({}, spool.get("bytes", 0))])
    out += _family("spool_dropped_total", "counter",
                   "Unsent messages removed from the spool, by reason.",
                   [({"reason": "overflow"}, spool.get("dropped_overflow", 0)),
                    ({"reason": "superseded"}, spool.get("superseded", 0)),
                    ({"reason": "corrupt"}, spool.get("corrupt", 0))])
    out += _family("license_state", "gauge", "The license state: 1 for the current state, 0 for the others.",
                   (({"state": s}, s == state) for s in STATES))
    out += _family("license_expiry_timestamp_seconds", "gauge",
                   "Unix time the license expires, as the server last said (0: unknown).",
                   [({}, lic.get("expires_at") or 0)])
    out += _family("clock_skew", "gauge",
                   "1 when the local clock disagrees with the licensing server by more than 300 s.",
                   [({}, bool(status.get("clock_skew")))])
    schema: Mapping[str, Any] = status.get("schema") or {}
    out += _family("schema_pending", "gauge",
                   "1 when the running registry is wider than the approved schema version (fields withheld).",
                   [({}, bool(schema.get("pending")))])
    out += _family("schema_approval_error", "gauge",
                   "1 when the approved-schema file is missing or unusable (nothing is sent).",
                   [({}, bool(schema.get("error")))])
    out += _family("metrics_timestamp_seconds", "gauge", "Unix time this file was written.",
                   [({}, status.get("now", 0))])
    return "\n".join(out) + "\n"


def build_labels() -> dict[str, str]:
    """Return the labels of fluxagent_build_info for this process."""
    return {"version": __version__, "python": platform.python_version()}


class DeliveryCounts:
    """Counters of ledger entries by kind and outcome, persisted in `<state_dir>/delivery-counts.json`.

    Each update reads only the entries newer than the last one counted (newest first, stopping
    there), so a large ledger costs one pass once, then only what was appended. Call it with the
    instance lock held (the daemon and `run --once` do): it writes the counts file.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.through_n = 0
        self.counts: dict[str, dict[str, int]] = {}
        self.loaded = False

    def _load(self) -> None:
        record = state.read_json(self.state_dir / COUNTS_FILE) or {}
        counts = record.get("counts")
        through = record.get("through_n")
        if isinstance(counts, dict) and isinstance(through, int) and through >= 0 and all(
                isinstance(v, dict) and all(isinstance(n, int) for n in v.values()) for v in counts.values()):
            self.counts, self.through_n = counts, through
        self.loaded = True

    def update(self) -> dict[str, dict[str, int]]:
        """Count the ledger entries appended since the last update and persist; raises StateError."""
        if not self.loaded:
            self._load()
        ledger_dir = self.state_dir / "ledger"
        if not ledger_dir.is_dir():
            return self.counts
        new: list[tuple[int, str, str]] = []
        for e in Ledger(ledger_dir, readonly=True).entries(reverse=True):
            if e.n <= self.through_n:
                break
            new.append((e.n, e.kind, e.outcome))
        if new:
            for _, kind, outcome in new:
                per_kind = self.counts.setdefault(kind, {})
                per_kind[outcome] = per_kind.get(outcome, 0) + 1
            self.through_n = new[0][0]
            state.write_json(self.state_dir / COUNTS_FILE,
                             {"v": COUNTS_VERSION, "through_n": self.through_n, "counts": self.counts},
                             mode=0o644)
        return self.counts


LAST_DELIVERED_FILE = "last-delivered.json"
_SEGMENT = re.compile(r"\d{12}\.jsonl")


def restore_last_delivered(reader: LastDelivered, state_dir: Path) -> LastDelivered:
    """Resume reader where the previous process left it (each daemon event is a process of its own),
    so a worker reads only the ledger lines appended since; anything odd means one full scan."""
    try:
        record = state.read_json(state_dir / LAST_DELIVERED_FILE) or {}
    except FluxError:
        return reader
    segment, offset, last = record.get("segment"), record.get("offset"), record.get("last")
    if (isinstance(segment, str) and _SEGMENT.fullmatch(segment) and isinstance(offset, int) and offset >= 0
            and isinstance(last, dict) and all(isinstance(v, dict) for v in last.values())):
        reader.segment, reader.offset, reader.last = reader.dir / segment, offset, last  # a name, never a path
    return reader


def save_last_delivered(reader: LastDelivered, state_dir: Path) -> None:
    """Record where reader stands and what it found (the last delivery per kind); raises StateError."""
    state.write_json(state_dir / LAST_DELIVERED_FILE, {
        "v": 1, "segment": reader.segment.name if reader.segment else None, "offset": reader.offset,
        "last": reader.last})


class MetricsWriter:
    """Writes `<state_dir>/metrics.prom` after each loop step; a failure is logged once, not every step."""

    def __init__(self, log: Any = None) -> None:
        self.log = log
        self.failing = False
        self.last_delivered: LastDelivered | None = None  # of the state dir, made on the first write
        self.deliveries: DeliveryCounts | None = None

    def write(self, cfg: Config, now: float) -> bool:
        """Collect the status of cfg's state dir, render it and write it atomically; return success."""
        from fluxagent.status import LastDelivered, collect_status

        path = cfg.instance.state_dir / METRICS_FILE
        ledger_dir = cfg.instance.state_dir / "ledger"
        if self.last_delivered is None or self.last_delivered.dir != ledger_dir:
            self.last_delivered = restore_last_delivered(LastDelivered(ledger_dir), cfg.instance.state_dir)
        position = (self.last_delivered.segment, self.last_delivered.offset)
        if self.deliveries is None or self.deliveries.state_dir != cfg.instance.state_dir:
            self.deliveries = DeliveryCounts(cfg.instance.state_dir)
        try:
            status = collect_status(cfg, now, last_delivered=self.last_delivered)
            text = render(status, build=build_labels(), deliveries=self.deliveries.update())
            atomic_write(path, text.encode(), mode=0o644)
            if (self.last_delivered.segment, self.last_delivered.offset) != position:
                save_last_delivered(self.last_delivered, cfg.instance.state_dir)
        except (OSError, FluxError) as exc:
            if not self.failing and self.log is not None:
                self.log.warning("metrics.write_failed", path=str(path), error=str(exc))
            self.failing = True
            return False
        if self.failing and self.log is not None:
            self.log.info("metrics.write_recovered", path=str(path))
        self.failing = False
        return True
