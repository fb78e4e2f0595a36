"""The transparency ledger: hash-chained JSON lines recording what left the machine.

Where it sits: docs/ARCHITECTURE.md, "State directory".

Each line is compact sorted JSON; its hash is sha256 of the line bytes (without the newline) and
the next line carries it as `prev` (64 zeros before entry 1). Lines live in segments
`ledger/{first_n:012d}.jsonl`; when old segments are dropped, `ledger/anchor.json` records the n
and prev of the oldest kept entry, so the kept chain still verifies from its start.

Only payloads (which passed the allowlist) and hashes go in: receipts are recorded as sha256, so
update credentials never reach the ledger. The newest entry's payload is covered by its
payload_sha256, its other fields only once the next entry chains to it; entries removed from the
end of the chain cannot be detected by the chain alone (compare with `seq` and the vendor).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fluxagent.errors import StateError
from fluxagent.statedir import fsutil
from fluxagent.statedir.state import encode_json, read_json, write_json

GENESIS = "0" * 64
ANCHOR = "anchor.json"
_SEGMENT = re.compile(r"^(\d{12})\.jsonl$")
# a key: `"seq":` with both quotes bare. Text inside a string has every quote escaped (`\"seq\":`), so a
# payload or a server's reason cannot pose as one. (A plain literal: the regex engine's fastest search.)
_SEQ_FIELD = re.compile(rb'"seq":(\d{1,19})')
_WORD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_DETAIL = 300
Writer = Callable[[int, bytes], int]


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line: what happened to which message, and the line's own hash."""

    n: int
    prev: str
    ts: int
    event: str
    kind: str
    endpoint: str | None
    seq: int | None
    payload: str | None
    payload_sha256: str | None
    outcome: str
    http_status: int | None
    receipt_sha256: str | None
    detail: str | None
    hash: str
    summary: dict[str, Any] | None = None  # a digest: its fields with each token list as its length

    def as_dict(self) -> dict[str, Any]:
        """Return the entry's fields (including hash) as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of Ledger.verify: ok, entries checked, and where and why the chain broke."""

    ok: bool
    checked: int
    first_bad_n: int | None = None
    segment: str | None = None
    reason: str | None = None
    note: str | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: _is_int(v) and v >= 1,
    "prev": lambda v: isinstance(v, str) and bool(_HEX64.match(v)),
    "ts": lambda v: _is_int(v) and v >= 0,
    "event": lambda v: isinstance(v, str) and bool(_WORD.match(v)),
    "kind": lambda v: isinstance(v, str) and bool(_WORD.match(v)),
    "endpoint": lambda v: v is None or isinstance(v, str),
    "seq": lambda v: v is None or (_is_int(v) and v >= 0),
    "payload": lambda v: v is None or isinstance(v, str),
    "payload_sha256": lambda v: v is None or (isinstance(v, str) and bool(_HEX64.match(v))),
    "outcome": lambda v: isinstance(v, str) and bool(_WORD.match(v)),
    # whatever three digits a server put in its status line (HTTP's own range is 100-599)
    "http_status": lambda v: v is None or (_is_int(v) and 0 <= v <= 999),
    "receipt_sha256": lambda v: v is None or (isinstance(v, str) and bool(_HEX64.match(v))),
    "detail": lambda v: v is None or isinstance(v, str),
}


def _summary(v: Any) -> bool:
    return isinstance(v, dict) and len(v) <= 16 and all(
        isinstance(k, str) and len(k) <= 32 and (_is_int(x) or isinstance(x, bool) or
                                                  (isinstance(x, str) and len(x) <= 64))
        for k, x in v.items())


def parse_line(line: bytes) -> LedgerEntry:
    """Return the entry of one line (without newline); raises ValueError saying what is wrong."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not valid JSON") from None
    # `summary` came later: lines written before it have every other field and verify as they did
    if not isinstance(obj, dict) or set(obj) - {"summary"} != set(_CHECKS):
        raise ValueError("not a ledger entry (wrong fields)")
    if "summary" in obj and not _summary(obj["summary"]):
        raise ValueError("invalid summary")
    bad = [k for k, check in _CHECKS.items() if not check(obj[k])]
    if bad:
        raise ValueError(f"invalid {', '.join(bad)}")
    if encode_json(obj)[:-1] != line:
        raise ValueError("not in canonical form")
    text = obj["payload"]
    if text is not None and hashlib.sha256(text.encode()).hexdigest() != obj["payload_sha256"]:
        raise ValueError("payload_sha256 does not match payload")
    return LedgerEntry(**obj, hash=hashlib.sha256(line).hexdigest())


class Ledger:
    """The ledger in `directory`. Opening repairs a torn last line (see `torn_bytes`) and finishes
    an interrupted segment drop; other corruption is left alone, reported by verify() and, when
    the last entry is unreadable, by `problem` (then append refuses). readonly=True (for `log`
    while the daemon runs) changes nothing on disk and ignores an unterminated last line.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_segment_bytes: int = 4 * 2**20,
        max_segments: int = 8,
        readonly: bool = False,
        writer: Writer = os.write,
    ) -> None:
        if max_segments < 2 or max_segment_bytes < 1:
            raise ValueError("max_segments must be at least 2 and max_segment_bytes positive")
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.max_segments = max_segments
        self.readonly = readonly
        self._write = writer
        self.torn_bytes = 0
        self.problem: str | None = None
        self.head: LedgerEntry | None = None
        self._max_seq = 0
        try:
            self._open()
        except OSError as exc:
            why = exc.strerror or exc
            raise StateError(f"cannot open the ledger in {directory}: {why}") from exc

    def _segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name))]
        return [p for _, p in sorted(found)]

    def _anchor(self) -> tuple[int, str] | None:
        obj = read_json(self.directory / ANCHOR)
        if obj is None:
            return None
        n, prev = obj.get("n"), obj.get("prev")
        if isinstance(n, int) and n >= 1 and isinstance(prev, str) and _HEX64.match(prev):
            return n, prev
        raise StateError(f"{self.directory / ANCHOR} is corrupt: it must hold n and prev")

    def _open(self) -> None:
        if not self.readonly:
            fsutil.ensure_private_dir(self.directory)
            fsutil.remove_stray_temp(self.directory)
            self._finish_drop()
        for seg in reversed(self._segments()):
            data = seg.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data) and not self.readonly:
                # A line without its newline was cut short by kill -9 in the middle of write().
                self.torn_bytes += len(data) - cut
                fd = os.open(seg, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.ftruncate(fd, cut)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if cut == 0:
                if not self.readonly:
                    seg.unlink()
                    fsutil.fsync_dir(self.directory)
                continue
            last = data[data.rfind(b"\n", 0, cut - 1) + 1:cut - 1]  # the newest entry, without its newline
            try:
                self.head = parse_line(last)
            except ValueError as exc:
                self.problem = f"last entry of {seg.name} is unreadable ({exc})"
                return
            # every `"seq":N` key of the segment's entries, found by a scan in C rather than by parsing
            # each line: every worker process of the daemon opens the ledger. Text inside a string (a
            # payload, a server's reason) has its quotes escaped, so it cannot pose as a seq here.
            self._max_seq = max((int(m) for m in _SEQ_FIELD.findall(data[:cut])), default=0)
            return

    def _finish_drop(self) -> None:
        """Delete segments wholly before the anchor: a drop interrupted after writing the anchor."""
        try:
            anchor = self._anchor()
        except StateError as exc:
            self.problem = exc.message
            return
        segs = self._segments()
        if anchor is None or not any(int(p.name[:12]) == anchor[0] for p in segs):
            return
        for p in segs:
            if int(p.name[:12]) < anchor[0]:
                p.unlink()
        fsutil.fsync_dir(self.directory)

    def max_seq(self) -> int:
        """Return the highest seq in the newest segment (a floor for recovering a lost seq file)."""
        return self._max_seq

    def append(
        self,
        *,
        now: int,
        event: str,
        kind: str,
        outcome: str,
        endpoint: str | None = None,
        seq: int | None = None,
        payload: bytes | None = None,
        payload_sha256: str | None = None,
        http_status: int | None = None,
        receipt: bytes | None = None,
        receipt_sha256: str | None = None,
        detail: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> LedgerEntry:
        """Append one durable entry (payload bytes kept, receipt only hashed); raises StateError.

        payload_sha256 / receipt_sha256 are only used when payload / receipt bytes are not given.
        On a failed write nothing is appended.
        Raises ValueError for a caller bug: event/kind/outcome not a short lowercase word, etc.
        """
        if self.readonly or self.problem:
            raise StateError(
                f"cannot append to the ledger in {self.directory}: {self.problem or 'read-only'}",
                hint="run `fluxagent log --verify`; move the ledger directory aside to start anew",
            )
        if payload is not None:
            payload_sha256 = hashlib.sha256(payload).hexdigest()
        if receipt is not None:
            receipt_sha256 = hashlib.sha256(receipt).hexdigest()
        n, prev = (self.head.n + 1, self.head.hash) if self.head else self._start()
        obj = {
            "n": n, "prev": prev, "ts": now, "event": event, "kind": kind, "endpoint": endpoint,
            "seq": seq, "payload": None if payload is None else payload.decode(),
            "payload_sha256": payload_sha256, "outcome": outcome, "http_status": http_status,
            "receipt_sha256": receipt_sha256,
            "detail": None if detail is None else detail[:MAX_DETAIL],
        }  # fmt: skip
        if summary is not None:
            obj["summary"] = summary
        line = encode_json(obj)
        entry = parse_line(line[:-1])  # refuses bad words/values before anything is written
        try:
            self._append_line(n, line)
        except OSError as exc:
            raise StateError(
                f"cannot append to the ledger in {self.directory}: {exc.strerror or exc}",
                hint="check free space and permissions of the state directory",
            ) from exc
        self.head = entry
        self._max_seq = max(self._max_seq, seq or 0)
        return entry

    def _start(self) -> tuple[int, str]:
        anchor = self._anchor()
        return anchor if anchor else (1, GENESIS)

    def _append_line(self, n: int, line: bytes) -> None:
        segs = self._segments()
        seg = segs[-1] if segs else None
        size = seg.stat().st_size if seg else 0
        new = 0
        if seg is None or (size > 0 and size + len(line) > self.max_segment_bytes):
            seg, new = self.directory / f"{n:012d}.jsonl", os.O_EXCL  # a new segment is a new file, never a link
            self._drop_oldest(segs)
        fd = os.open(seg, os.O_WRONLY | os.O_APPEND | os.O_CREAT | new | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                # One write() on an O_APPEND fd: a reader never sees two entries interleaved.
                if self._write(fd, line) != len(line):
                    raise OSError(28, "short write to the ledger (is the disk full?)")
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # leave no torn line behind
                    os.fsync(fd)
                    if size == 0:
                        os.unlink(seg)  # nor an empty segment this append had just started
                raise
        finally:
            os.close(fd)
        if size == 0:
            fsutil.fsync_dir(self.directory)

    def _drop_oldest(self, segs: list[Path]) -> None:
        """Before starting a segment, drop the oldest ones so at most max_segments remain."""
        drop = len(segs) + 1 - self.max_segments  # < len(segs) as max_segments >= 2
        if drop <= 0:
            return
        try:
            first = parse_line(segs[drop].read_bytes().split(b"\n", 1)[0])
        except ValueError:
            return  # keep everything rather than anchor to a damaged entry; verify reports it
        # Anchor first: a crash before the unlinks leaves segments that _finish_drop removes.
        write_json(self.directory / ANCHOR, {"v": 1, "n": first.n, "prev": first.prev})
        for p in segs[:drop]:
            p.unlink()
        fsutil.fsync_dir(self.directory)

    def _lines(self, segs: list[Path]) -> Iterator[tuple[Path, bytes]]:
        newest = self._segments()[-1:]
        for seg in segs:
            data = seg.read_bytes()
            if seg in newest:
                data = data[: data.rfind(b"\n") + 1]  # an unterminated line may still be in write()
            for line in _split(data):
                yield seg, line

    def entries(self, reverse: bool = False) -> Iterator[LedgerEntry]:
        """Yield entries oldest first (newest first if reverse); raises StateError on a bad line."""
        segs = self._segments()
        if reverse:
            for seg in reversed(segs):
                lines = list(self._lines([seg]))
                yield from (self._parse(s, line) for s, line in reversed(lines))
        else:
            yield from (self._parse(s, line) for s, line in self._lines(segs))

    def _parse(self, seg: Path, line: bytes) -> LedgerEntry:
        try:
            return parse_line(line)
        except ValueError as exc:
            raise StateError(
                f"ledger segment {seg.name} holds a bad entry: {exc}",
                hint="run `fluxagent log --verify` to locate it",
            ) from None

    def get(self, n: int) -> LedgerEntry | None:
        """Return entry n, or None if it is not (or no longer) in the ledger; raises StateError."""
        segs = [p for p in self._segments() if int(p.name[:12]) <= n][-1:]
        found = (e for s, line in self._lines(segs) if (e := self._parse(s, line)).n == n)
        return next(found, None)

    def verify(self) -> VerifyResult:
        """Check every kept entry and the chain from the anchor (or genesis) to the newest entry."""
        try:
            anchor = self._anchor()
        except StateError as exc:
            return VerifyResult(False, 0, None, ANCHOR, exc.message)
        segs = self._segments()
        note = None
        if segs and not segs[-1].read_bytes().endswith(b"\n") and segs[-1].stat().st_size:
            note = f"{segs[-1].name} ends in an unterminated line (being written, or torn); skipped"
        if anchor and not segs:
            why = f"anchor.json says the ledger starts at entry {anchor[0]}, but no segment is left"
            return VerifyResult(False, 0, anchor[0], None, why, note)
        start = "anchor.json" if anchor else "the genesis hash"
        want_n, want_prev = anchor if anchor else (1, GENESIS)
        checked, seg_now, prev_seg = 0, None, ""
        lines = self._lines(segs)

        def bad(n: int, seg: Path | str, why: str) -> VerifyResult:
            name = seg if isinstance(seg, str) else seg.name
            return VerifyResult(False, checked, n, name, why, note)

        for seg, line in lines:
            if seg != seg_now:
                seg_now = seg
                if int(seg.name[:12]) != want_n:
                    why = f"segment {seg.name} should start at entry {want_n}"
                    if checked == 0:
                        why += " as anchor.json says" if anchor else " as there is no anchor.json"
                    return bad(want_n, seg, why)
            try:
                e = parse_line(line)
            except ValueError as exc:
                return bad(want_n, seg, f"entry {want_n} in {seg.name}: {exc}")
            if e.n != want_n:
                return bad(want_n, seg, f"entry {want_n} in {seg.name}: n is {e.n}")
            if e.prev != want_prev:
                where = f"hash chain broken at entry {e.n} in {seg.name}: prev does not match"
                if checked == 0:
                    return bad(e.n, seg, f"{where} {start}")
                nxt = next(lines, None)
                if nxt is None:
                    why = f"entry {e.n - 1} or entry {e.n} was altered"
                    return bad(e.n - 1, prev_seg, f"{where} the hash of entry {e.n - 1}; {why}")
                if _prev_of(nxt[1]) == e.hash:
                    why = f"entry {e.n - 1} was altered"
                    return bad(e.n - 1, prev_seg, f"{where} the hash of entry {e.n - 1}; {why}")
                why = f"entry {e.n} was altered"
                return bad(e.n, seg, f"{where} the hash of entry {e.n - 1}; {why}")
            checked, want_n, want_prev, prev_seg = checked + 1, e.n + 1, e.hash, seg.name
        return VerifyResult(True, checked, note=note)


def _split(data: bytes) -> list[bytes]:
    """Return the lines of data: split on newline only (no other line breaks), final one kept."""
    parts = data.split(b"\n")
    return parts[:-1] if parts[-1] == b"" else parts


def _prev_of(line: bytes) -> str | None:
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        prev = json.loads(line).get("prev")
        return prev if isinstance(prev, str) else None
    return None
