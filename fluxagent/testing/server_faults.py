"""Scriptable faults of the reference license server: one declarative value per misbehaviour.

A `Fault` describes how one answer departs from the protocol; the server consumes one queued
fault per request. New faults are new constructor functions over the same few fields.
"""

from __future__ import annotations

import functools
import struct
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

# Receipt mutations: the request is processed normally, then its receipt is spoiled this way.
RECEIPT_MUTATIONS = (
    "truncated",  # the receipt bytes cut in half
    "unsigned",  # an envelope with an empty signature list
    "unpinned",  # signed by a key that is not one of the vendor keys
    "wrong_req",  # `req` names another request payload
    "wrong_nonce",  # `nonce` is not the request's
    "wrong_aud",  # `aud` is another instance
    "wrong_type",  # payloadType is the license-file type, still signed by the vendor key
)
GZIP_BOMB_BYTES = 1 << 30
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Fault:
    """How one answer misbehaves; build it with the class-method constructors."""

    endpoint: str | None = None  # only requests to this path or kind consume it
    process: bool = False  # run the protocol first, so state advances as if answered
    wait: float = 0.0  # seconds before answering
    hangup: bool = False  # close the connection without answering
    code: int | None = None  # replace the answer with this status
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    body_size: int = 0  # when > 0: send this many zero bytes instead of `body`
    chunked: bool = False  # no Content-Length: Transfer-Encoding: chunked
    gzip_bomb: bool = False  # body_size zeros, gzip-compressed, Content-Encoding: gzip
    chunk: int = 0  # when > 0: send the body in pieces of this size ...
    interval: float = 0.0  # ... this many seconds apart
    mutate: str | None = None  # one of RECEIPT_MUTATIONS

    def __post_init__(self) -> None:
        if self.mutate is not None and self.mutate not in RECEIPT_MUTATIONS:
            raise ValueError(f"unknown receipt mutation {self.mutate!r}")

    def matches(self, path: str, kind: str | None) -> bool:
        """Return whether a request to path (of kind) consumes this fault."""
        return self.endpoint is None or self.endpoint in (path, kind)

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: str | None = None,
        body: bytes = b'{"error":"scripted"}',
        endpoint: str | None = None,
        process: bool = False,
    ) -> Fault:
        """Return a fault answering with code (and Retry-After when given) instead of a receipt."""
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls(endpoint, process, code=code, headers=headers, body=body)

    @classmethod
    def rate_limited(cls, retry_after: str | None = None, *, endpoint: str | None = None) -> Fault:
        """Return a 429 fault; retry_after is seconds ("120"), an HTTP date, or None (absent)."""
        return cls.status(429, retry_after=retry_after, endpoint=endpoint)

    @classmethod
    def delay(cls, seconds: float, *, endpoint: str | None = None) -> Fault:
        """Return a fault that answers normally after waiting seconds."""
        return cls(endpoint, process=True, wait=seconds)

    @classmethod
    def drip(
        cls, total_bytes: int, chunk: int, interval: float, *, endpoint: str | None = None
    ) -> Fault:
        """Return a 200 fault sending total_bytes zeros in chunk-byte pieces, interval s apart."""
        return cls(endpoint, code=200, body_size=total_bytes, chunk=chunk, interval=interval)

    @classmethod
    def redirect(cls, location: str, code: int = 302, *, endpoint: str | None = None) -> Fault:
        """Return a redirect fault (301/302/307/308) pointing at location."""
        return cls(endpoint, code=code, headers=(("Location", location),))

    @classmethod
    def close(cls, *, endpoint: str | None = None, process: bool = False) -> Fault:
        """Return a fault closing the connection without an answer (after processing if asked)."""
        return cls(endpoint, process, hangup=True)

    @classmethod
    def oversized(cls, size: int, *, chunked: bool = False, endpoint: str | None = None) -> Fault:
        """Return a 200 fault with a size-byte body, declared by Content-Length or sent chunked."""
        return cls(endpoint, code=200, body_size=size, chunked=chunked)

    @classmethod
    def bomb(cls, size: int = GZIP_BOMB_BYTES, *, endpoint: str | None = None) -> Fault:
        """Return a 200 fault whose gzip body inflates to size zero bytes."""
        return cls(endpoint, code=200, body_size=size, gzip_bomb=True)

    @classmethod
    def wrong_shape(
        cls, body: bytes = b'[{"payloadType":"receipt"}]', *, endpoint: str | None = None
    ) -> Fault:
        """Return a 200 fault whose body is valid JSON that is not a DSSE envelope."""
        return cls(endpoint, code=200, body=body)

    @classmethod
    def receipt(cls, mutation: str, *, endpoint: str | None = None) -> Fault:
        """Return a fault that processes the request and spoils its receipt (RECEIPT_MUTATIONS)."""
        return cls(endpoint, process=True, mutate=mutation)


class FaultQueue:
    """Thread-safe FIFO of faults; each request takes the first one that matches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[Fault] = deque()

    def push(self, *faults: Fault) -> None:
        """Append faults to the queue."""
        with self._lock:
            self._items.extend(faults)

    def take(self, path: str, kind: str | None) -> Fault | None:
        """Remove and return the first fault matching a request to path, or None."""
        with self._lock:
            for i, fault in enumerate(self._items):
                if fault.matches(path, kind):
                    del self._items[i]
                    return fault
        return None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def zeros(size: int) -> Iterator[bytes]:
    """Yield size zero bytes in blocks, without holding them all in memory."""
    block = bytes(min(size, _BLOCK))
    full, rest = divmod(size, _BLOCK)
    for _ in range(full):
        yield block
    if rest:
        yield block[:rest]


@functools.lru_cache(maxsize=8)
def gzip_of_zeros(size: int) -> bytes:
    """Return a valid gzip stream of size zero bytes, built without compressing them all.

    One full-flushed deflate block of 1 MiB zeros is independent of what precedes it, so
    repeating it is a valid stream: a 1 GiB bomb costs a CRC pass, not a compression pass.
    """
    full, rest = divmod(size, _BLOCK)
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = head.compress(bytes(_BLOCK)) + head.flush(zlib.Z_FULL_FLUSH)
    tail_c = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = tail_c.compress(bytes(rest)) + tail_c.flush(zlib.Z_FINISH)
    crc = 0
    for piece in zeros(size):
        crc = zlib.crc32(piece, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, mtime 0
    return header + block * full + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)
