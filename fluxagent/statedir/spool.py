"""The spool: a durable, bounded queue of sealed messages in `<state_dir>/spool/`.

Why: docs/ARCHITECTURE.md, "Spool before send".

An entry is written to `tmp/`, fsynced and renamed into `new/`, so after a kill -9 an entry in
`new/` is always whole; anything left in `tmp/` is removed at open. Entries are removed only after
delivery or rejection, so delivery is at-least-once. Newer license and digest messages supersede
unsent older ones; when the bounds are hit the oldest heartbeat is dropped, never a license or
digest (the put is refused instead). Counters survive restarts in `counters.json`.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxagent.errors import EnvelopeError, FluxError, StateError
from fluxagent.statedir import fsutil
from fluxagent.statedir.state import encode_json, read_json, write_json
from fluxagent.transport import Body, FileBody
from fluxagent.wire.envelope import parse_envelope
from fluxagent.wire.messages import Sealed, digest_summary

SUPERSEDING = ("license", "digest")
COUNTERS = ("superseded", "dropped_overflow", "corrupt")
_NAME = re.compile(r"^(\d{20})-([a-z]+)\.json$")
_FIELDS = {"kind", "endpoint", "seq", "payload_sha256", "envelope", "spooled_at"}
_STREAMED_FIELDS = {"v", "kind", "endpoint", "seq", "payload_sha256", "spooled_at", "iid", "nonce", "summary",
                    "envelope_bytes"}
_STREAMED_MAGIC = b"fluxagent-spool/2 "  # starts a large entry's header line; a whole-JSON entry starts with "{"
Writer = Callable[[int, bytes], int]


class SpoolFull(StateError):
    """The spool is at its bound and holds no heartbeat that could be dropped to make room."""

    code = "spool_full"


class TooBig(SpoolFull):
    """One message alone is larger than the spool's byte bound: it can never be queued as configured."""

    code = "spool_too_small"


@dataclass(frozen=True)
class Entry:
    """One spooled message: what it is, the exact envelope to send, and its file.

    A large message (a streamed digest) is stored as a header line followed by the raw envelope;
    its `envelope` is then empty here and `offset` says where it starts in the file, so it is
    sent from the file (`body()`) and never held whole.
    """

    kind: str
    endpoint: str
    seq: int
    payload_sha256: str
    envelope: bytes
    path: Path
    size: int
    spooled_at: int
    iid: str = ""
    nonce: str = ""
    summary: dict[str, Any] | None = None
    offset: int = 0

    @property
    def payload(self) -> bytes:
        """Return the exact payload bytes inside the envelope (reads the file of a large entry)."""
        return parse_envelope(self.read_envelope())[1]

    def read_envelope(self) -> bytes:
        """Return the whole envelope text; raises OSError for a large entry whose file went away."""
        if not self.offset:
            return self.envelope
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read()

    def envelope_chunks(self) -> Iterator[bytes]:
        """Yield the envelope text in pieces (a large entry's read from its file as it is sent)."""
        body = self.body()
        return iter((body,)) if isinstance(body, bytes) else iter(body)

    def body(self) -> Body:
        """Return the request body to send: the envelope bytes, or the file part that holds them."""
        return FileBody(self.path, self.offset, self.size - self.offset) if self.offset else self.envelope


@dataclass(frozen=True)
class PutResult:
    """What put did: the new entry, the entries it superseded or dropped (for the ledger)."""

    entry: Entry
    superseded: tuple[Entry, ...] = ()
    dropped: tuple[Entry, ...] = ()
    counters_error: str | None = None  # counters could not be persisted; the entry is queued


@dataclass(frozen=True)
class Opened:
    """What opening the spool cleaned up after a crash, for the caller to log and ledger."""

    stray_removed: int = 0
    quarantined: tuple[Path, ...] = ()
    superseded: tuple[Entry, ...] = ()
    dropped: tuple[Entry, ...] = ()
    counters_reset: str | None = None


@dataclass(frozen=True)
class _Meta:
    seq: int
    kind: str
    path: Path
    size: int


def _round_up(size: int) -> int:
    """Return size rounded up to the next whole MB plus one, a value worth writing into a config."""
    return (size // 1_000_000 + 2) * 1_000_000


def _decode_streamed(path: Path, m: re.Match[str], head: bytes, size: int) -> Entry:
    """Return the large entry whose header line is head and whose file has size bytes; raises ValueError."""
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("header is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != _STREAMED_FIELDS or doc["v"] != 2:
        raise ValueError("header has the wrong fields")
    if doc["seq"] != int(m[1]) or doc["kind"] != m[2]:
        raise ValueError("seq or kind differ from the file name")
    texts = ("endpoint", "iid", "nonce", "payload_sha256")
    if not all(isinstance(doc[k], str) for k in texts) or not isinstance(doc["spooled_at"], int):
        raise ValueError("a header field has the wrong type")
    if not (doc["summary"] is None or isinstance(doc["summary"], dict)):
        raise ValueError("summary is not an object")
    offset = len(_STREAMED_MAGIC) + len(head) + 1
    if doc["envelope_bytes"] != size - len(head) - 1:  # written whole to tmp/ and renamed: a short one is damaged
        raise ValueError("the file is not as long as its header says")
    return Entry(m[2], doc["endpoint"], doc["seq"], doc["payload_sha256"], b"", path, offset + doc["envelope_bytes"],
                 doc["spooled_at"], doc["iid"], doc["nonce"], doc["summary"], offset)


def read_entry(path: Path) -> Entry:
    """Return the entry in the file at path; raises ValueError if it is not whole, OSError."""
    m = _NAME.match(path.name)
    if not m:
        raise ValueError("not a spool entry name")
    with open(path, "rb") as f:
        first = f.read(len(_STREAMED_MAGIC))
        if first == _STREAMED_MAGIC:
            head = f.readline(64 * 1024)
            if not head.endswith(b"\n"):
                raise ValueError("header line is not terminated")
            size = os.fstat(f.fileno()).st_size
            return _decode_streamed(path, m, head[:-1], size - len(first))
        return _decode(path, first + f.read())


def _decode(path: Path, data: bytes) -> Entry:
    """Return the entry stored in data under path's name; raises ValueError if it is not whole."""
    m = _NAME.match(path.name)
    if not m:
        raise ValueError("not a spool entry name")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise ValueError("wrong fields")
    if doc["seq"] != int(m[1]) or doc["kind"] != m[2]:
        raise ValueError("seq or kind differ from the file name")
    if not (isinstance(doc["endpoint"], str) and isinstance(doc["envelope"], str)):
        raise ValueError("endpoint or envelope is not a string")
    if not isinstance(doc["spooled_at"], int):
        raise ValueError("spooled_at is not an integer")
    envelope = doc["envelope"].encode()
    try:
        payload = parse_envelope(envelope)[1]
    except EnvelopeError as exc:
        raise ValueError(exc.message) from None
    if hashlib.sha256(payload).hexdigest() != doc["payload_sha256"]:
        raise ValueError("payload_sha256 does not match the envelope")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("payload is not JSON") from None
    if not isinstance(obj, dict) or obj.get("seq") != doc["seq"]:
        raise ValueError("payload is not a message with the entry's seq")
    body = obj.get("body")
    summary = digest_summary(body) if m[2] == "digest" and isinstance(body, dict) else None
    if summary is not None:
        summary["payload_bytes"] = len(payload)
    return Entry(
        m[2], doc["endpoint"], doc["seq"], doc["payload_sha256"], envelope, path, len(data),
        doc["spooled_at"], str(obj.get("iid", "")), str(obj.get("nonce", "")), summary,
    )  # fmt: skip


class Spool:
    """The spool in `directory`; opening cleans up after a crash (reported in `opened`).

    Not safe for two processes at once: the daemon's lock file guards the state directory.
    """

    def __init__(
        self, directory: Path, max_messages: int, max_bytes: int, *, writer: Writer = os.write
    ) -> None:
        self.directory = directory
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._write = writer
        self._tmp, self._new, self._bad = directory / "tmp", directory / "new", directory / "bad"
        self._index: list[_Meta] = []
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._quarantined: list[Path] = []
        try:
            self.opened = self._open()
        except OSError as exc:
            why = exc.strerror or exc
            raise StateError(f"cannot open the spool in {directory}: {why}") from exc

    def _open(self) -> Opened:
        for d in (self.directory, self._tmp, self._new, self._bad):
            fsutil.ensure_private_dir(d)
        stray = 0
        for p in self._tmp.iterdir():  # only an interrupted put leaves files here
            p.unlink()
            stray += 1
        stray += fsutil.remove_stray_temp(self.directory)
        reset = None
        try:
            saved = read_json(self.directory / "counters.json") or {}
            self._counters.update({k: int(saved.get(k, 0)) for k in COUNTERS})
        except (FluxError, TypeError, ValueError) as exc:
            reset = f"counters.json unreadable, counting from 0: {exc}"
        for path in sorted(self._new.iterdir()):
            entry = self._read(path)
            if entry is not None:
                self._index.append(_Meta(entry.seq, entry.kind, path, entry.size))
        # A crash between writing a new entry and deleting what it supersedes leaves both.
        stale = [m for m in self._index if m.kind in SUPERSEDING and self._newer_of_kind(m)]
        dropped = self._plan_overflow([m for m in self._index if m not in stale], 0, 0)
        sup, drop = self._discard(stale, dropped or [])
        if sup or drop or reset:
            self._save_counters()
        return Opened(stray, tuple(self._quarantined), sup, drop, reset)

    def _newer_of_kind(self, meta: _Meta) -> bool:
        return any(m.kind == meta.kind and m.seq > meta.seq for m in self._index)

    def _read(self, path: Path) -> Entry | None:
        """Return the entry at path, or None after moving a corrupt one to bad/ (counted)."""
        try:
            return read_entry(path)
        except FileNotFoundError:
            pass  # removed behind our back: nothing to send
        except (OSError, ValueError):
            self.quarantine(path)
        self._index = [m for m in self._index if m.path != path]
        return None

    def quarantine(self, path: Path) -> Path:
        """Move a damaged entry file (of the queue, or exported) to bad/, count it; return where it went."""
        with contextlib.suppress(OSError):
            os.replace(path, self._bad / path.name)
            fsutil.fsync_dir(path.parent)
        self._quarantined.append(self._bad / path.name)
        self._counters["corrupt"] += 1
        self._save_counters()
        return self._bad / path.name

    def _plan_overflow(self, keep: list[_Meta], add: int, add_size: int) -> list[_Meta] | None:
        """Return the oldest heartbeats to drop so keep (+ add entries) fits, or None if none do."""
        count = len(keep) + add
        total = sum(m.size for m in keep) + add_size
        heartbeats = iter([m for m in keep if m.kind == "heartbeat"])
        dropped: list[_Meta] = []
        while count > self.max_messages or total > self.max_bytes:
            victim = next(heartbeats, None)
            if victim is None:
                return None
            dropped.append(victim)
            count, total = count - 1, total - victim.size
        return dropped

    def _discard(
        self, superseded: list[_Meta], dropped: list[_Meta]
    ) -> tuple[tuple[Entry, ...], tuple[Entry, ...]]:
        """Delete superseded and dropped entries (counted); return them as loaded entries."""
        loaded = {m.seq: self._read(m.path) for m in superseded + dropped}
        # Best effort: an entry whose deletion failed or was lost in a crash is found again at
        # open, where the same supersede and bound rules discard it.
        with contextlib.suppress(OSError):
            for m in superseded + dropped:
                with contextlib.suppress(FileNotFoundError):
                    m.path.unlink()
            if loaded:
                fsutil.fsync_dir(self._new)
        gone = {m.seq for m in superseded + dropped}
        self._index = [m for m in self._index if m.seq not in gone]
        sup = tuple(e for m in superseded if (e := loaded[m.seq]) is not None)
        drop = tuple(e for m in dropped if (e := loaded[m.seq]) is not None)
        # corrupt ones were quarantined (and counted) by _read instead
        self._counters["superseded"] += len(sup)
        self._counters["dropped_overflow"] += len(drop)
        return sup, drop

    def _save_counters(self) -> str | None:
        try:
            write_json(self.directory / "counters.json", {"v": 1, **self._counters})  # 0.1.0 wrote no "v"
        except StateError as exc:
            return exc.message
        return None

    def check_room(self, kind: str, size: int) -> None:
        """Raise TooBig or SpoolFull unless an entry of kind and about size bytes could be queued now."""
        if size > self.max_bytes:
            raise TooBig(
                f"the {kind} message ({size} bytes) is larger than spool.max_bytes ({self.max_bytes} bytes):"
                " it cannot be queued, and is not sent; the other kinds are",
                hint=f"raise spool.max_bytes in the config to at least {_round_up(size)} bytes",
            )
        superseded = [m for m in self._index if kind in SUPERSEDING and m.kind == kind]
        if self._plan_overflow([m for m in self._index if m not in superseded], 1, size) is None:
            raise SpoolFull(
                f"spool is full ({self.depth()} messages, {self.bytes_used()} bytes; limits"
                f" {self.max_messages}, {self.max_bytes}) and holds no heartbeat to drop:"
                f" {kind} was not queued",
                hint="check why the server is unreachable, or raise spool.max_messages/spool.max_bytes",
            )

    def put(self, sealed: Sealed, now: int) -> PutResult:
        """Durably queue sealed; raises SpoolFull or StateError (then the queue is unchanged)."""
        seq: Any = sealed.obj.get("seq")
        if not isinstance(seq, int) or seq < 1 or any(m.seq == seq for m in self._index):
            raise StateError(f"cannot spool {sealed.kind}: seq {seq!r} missing or already queued")
        iid, nonce = str(sealed.obj.get("iid", "")), str(sealed.obj.get("nonce", ""))
        offset = 0
        if sealed.streamed is not None:
            head = _STREAMED_MAGIC + encode_json({
                "v": 2, "kind": sealed.kind, "endpoint": sealed.endpoint, "seq": seq,
                "payload_sha256": sealed.payload_sha256, "spooled_at": now, "iid": iid, "nonce": nonce,
                "summary": sealed.summary, "envelope_bytes": sealed.envelope_size,
            })  # fmt: skip
            offset, size = len(head), len(head) + sealed.envelope_size
            chunks: Iterable[bytes] = itertools.chain((head,), sealed.envelope_chunks())
        else:
            data = encode_json({
                "kind": sealed.kind, "endpoint": sealed.endpoint, "seq": seq,
                "payload_sha256": sealed.payload_sha256, "envelope": sealed.envelope.decode(),
                "spooled_at": now,
            })  # fmt: skip
            size, chunks = len(data), (data,)
        self.check_room(sealed.kind, size)
        supersedes = sealed.kind in SUPERSEDING
        superseded = [m for m in self._index if supersedes and m.kind == sealed.kind]
        dropped = self._plan_overflow([m for m in self._index if m not in superseded], 1, size)
        assert dropped is not None  # check_room said it fits
        path = self._new / f"{seq:020d}-{sealed.kind}.json"
        self._store(path, chunks)
        sup, drop = self._discard(superseded, dropped)
        bisect.insort(self._index, _Meta(seq, sealed.kind, path, size), key=lambda m: m.seq)
        entry = Entry(
            sealed.kind, sealed.endpoint, seq, sealed.payload_sha256, sealed.envelope, path,
            size, now, iid, nonce, sealed.summary, offset,
        )  # fmt: skip
        return PutResult(entry, sup, drop, self._save_counters())

    def _store(self, path: Path, chunks: Iterable[bytes]) -> None:
        """Write chunks to tmp/, fsync, rename to path, fsync new/; on error leave no trace."""
        tmp, placed = self._tmp / f"{path.name}.{secrets.token_hex(8)}", False
        try:
            fd = fsutil.create_new(tmp)  # an unpredictable name, never through a link
            try:
                for data in chunks:
                    done = 0
                    while done < len(data):
                        done += self._write(fd, data[done:])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            placed = True
            fsutil.fsync_dir(self._new)
        except OSError as exc:
            with contextlib.suppress(OSError):
                (path if placed else tmp).unlink()
            raise StateError(
                f"cannot write to the spool in {self.directory}: {exc.strerror or exc};"
                " the message was not queued",
                hint="check free space and permissions of the state directory",
            ) from exc

    def entries(self) -> list[Entry]:
        """Return the queued entries oldest first (by seq); corrupt files are moved to bad/."""
        loaded = [self._read(m.path) for m in list(self._index)]
        return [e for e in loaded if e is not None]

    def oldest(self) -> Entry | None:
        """Return the oldest queued entry, or None when the spool is empty."""
        while self._index:
            entry = self._read(self._index[0].path)  # a None also drops it from the index
            if entry is not None:
                return entry
        return None

    def move_out(self, entry: Entry, directory: Path) -> Entry:
        """Move entry's file into directory (same file system), out of the queue; return it there.

        Raises StateError (then the entry stays queued).
        """
        target = directory / entry.path.name
        try:
            os.replace(entry.path, target)
            fsutil.fsync_dir(directory)
            fsutil.fsync_dir(self._new)
        except OSError as exc:
            raise StateError(f"cannot move {entry.path} to {directory}: {exc.strerror or exc}") from exc
        self._index = [m for m in self._index if m.seq != entry.seq]
        return dataclasses.replace(entry, path=target)

    def remove(self, entry: Entry) -> None:
        """Delete entry after delivery or rejection (idempotent); raises StateError."""
        try:
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
            fsutil.fsync_dir(self._new)
        except OSError as exc:
            raise StateError(f"cannot remove {entry.path}: {exc.strerror or exc}") from exc
        self._index = [m for m in self._index if m.seq != entry.seq]

    def holds(self, kind: str) -> bool:
        """Return whether an entry of kind is queued."""
        return any(m.kind == kind for m in self._index)

    def depth(self) -> int:
        """Return the number of queued entries."""
        return len(self._index)

    def bytes_used(self) -> int:
        """Return the total size of the queued entry files in bytes."""
        return sum(m.size for m in self._index)

    def max_seq(self) -> int:
        """Return the highest queued seq, 0 when empty (a floor for recovering a lost seq file)."""
        return self._index[-1].seq if self._index else 0

    def counters(self) -> dict[str, int]:
        """Return the persisted counters: superseded, dropped_overflow, corrupt."""
        return dict(self._counters)
