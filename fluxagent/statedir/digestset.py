"""The token sets a digest delta is computed against, in the state dir (docs/PROTOCOL.md, digest deltas).

`digest-pending.bin` holds the token set of the newest spooled digest; when a receipt acknowledges
its root, it is renamed to `digest-acked.bin`, the base of the next delta. Both files are packed
16-byte tokens with a checksum: a file that is missing, torn, corrupt, for another digest key or
another root means "no base", and the next digest is full — never a wrong delta.

File layout: `fluxagent-digest-set/1\n`, key_id (16 ASCII hex), root (64 ASCII hex), u64be server
count, u64be network count, the server tokens, the network tokens (each sorted), and a 32-byte
BLAKE2b of everything before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fluxagent.identifiers import TOKEN_BYTES, TokenList, TokenSet
from fluxagent.statedir import fsutil

PENDING = "digest-pending.bin"
ACKED = "digest-acked.bin"
MAGIC = b"fluxagent-digest-set/1\n"
_HEAD = len(MAGIC) + 16 + 64 + 16
_SUM = 32
_CHUNK = 1 << 20  # bytes read at a time (a multiple of TOKEN_BYTES)


@dataclass(frozen=True)
class DigestSet:
    """A stored token set: the digest key's id, its root, and the two finished token lists."""

    key_id: str
    root: str
    tokens: TokenSet


def _pieces(key_id: str, root: str, tokens: TokenSet) -> Iterator[bytes | memoryview]:
    h = hashlib.blake2b(digest_size=_SUM)
    head = MAGIC + key_id.encode() + root.encode() + len(tokens.servers).to_bytes(8, "big") + \
        len(tokens.networks).to_bytes(8, "big")
    pieces: Iterator[bytes | memoryview] = itertools.chain((head,), tokens.servers.packed(),
                                                           tokens.networks.packed())
    for piece in pieces:
        h.update(piece)
        yield piece
    yield h.digest()


def write_pending(state_dir: Path, key_id: str, root: str, tokens: TokenSet) -> None:
    """Atomically store tokens as the set of the digest just spooled; raises OSError."""
    fsutil.atomic_write(state_dir / PENDING, _pieces(key_id, root, tokens))


def acknowledge(state_dir: Path, root: str) -> bool:
    """Make the pending set the acknowledged one if it is the set of root; return whether it was.

    Otherwise the acknowledged set is removed: a root the agent holds no set for is no base.
    Raises OSError.
    """
    if root_of(state_dir / PENDING) == root:
        os.replace(state_dir / PENDING, state_dir / ACKED)
        fsutil.fsync_dir(state_dir)
        return True
    forget(state_dir)
    return False


def forget(state_dir: Path) -> None:
    """Remove the acknowledged set: the next digest is full. Raises OSError."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / ACKED)
        fsutil.fsync_dir(state_dir)


def root_of(path: Path) -> str | None:
    """Return the root of the whole, uncorrupted set file at path (checked in pieces, never loaded), or None."""
    h = hashlib.blake2b(digest_size=_SUM)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD)
            if size < _HEAD + _SUM or not head.startswith(MAGIC):
                return None
            h.update(head)
            left = size - _HEAD - _SUM
            while left > 0:
                chunk = f.read(min(left, 2**20))
                if not chunk:
                    return None
                h.update(chunk)
                left -= len(chunk)
            if h.digest() != f.read(_SUM):
                return None
    except OSError:
        return None
    p = len(MAGIC)
    ns, nn = int.from_bytes(head[p + 80:p + 88], "big"), int.from_bytes(head[p + 88:p + 96], "big")
    if _HEAD + (ns + nn) * TOKEN_BYTES + _SUM != size:
        return None
    try:
        return head[p + 16:p + 80].decode("ascii")
    except UnicodeDecodeError:
        return None


def read(path: Path) -> DigestSet | None:
    """Return the set stored at path, or None when it is missing, torn or corrupt (never a wrong set).

    Read a chunk at a time straight into the token lists, never the whole file at once besides them.
    """
    h = hashlib.blake2b(digest_size=_SUM)
    lists: list[TokenList] = []
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_HEAD)
            if size < _HEAD + _SUM or len(head) != _HEAD or not head.startswith(MAGIC):
                return None
            h.update(head)
            p = len(MAGIC)
            ns, nn = int.from_bytes(head[p + 80:p + 88], "big"), int.from_bytes(head[p + 88:p + 96], "big")
            if _HEAD + (ns + nn) * TOKEN_BYTES + _SUM != size:
                return None
            for count in (ns, nn):
                tokens, left = TokenList(), count * TOKEN_BYTES
                while left:
                    chunk = f.read(min(left, _CHUNK))
                    if not chunk or len(chunk) % TOKEN_BYTES:
                        return None  # shrunk meanwhile: a torn read is no base
                    h.update(chunk)
                    tokens.add_sorted(chunk)
                    left -= len(chunk)
                tokens.finished = True
                lists.append(tokens)
            if h.digest() != f.read(_SUM):
                return None
    except OSError:
        return None
    try:
        key_id, root = head[p:p + 16].decode("ascii"), head[p + 16:p + 80].decode("ascii")
    except UnicodeDecodeError:
        return None
    found = TokenSet(lists[0], lists[1])
    if found.root != root:  # the checksum held, yet the lists are not that root's: no base
        return None
    return DigestSet(key_id, root, found)


def acked(state_dir: Path) -> DigestSet | None:
    """Return the acknowledged set, or None (no base: the next digest is full)."""
    return read(state_dir / ACKED)
