"""The daemon's local control socket: `fluxagent credentials` and the helpers ask the running daemon.

The daemon holds the state lock (seq, spool, ledger) for as long as it runs, so a credentials
request from another process cannot seal a message itself. It asks the daemon instead over
`<state_dir>/control.sock` (a Unix socket in the 0700 state dir; the peer must be the same user
or root), one JSON line each way (the client is updates/client.py). The supervisor answers from
the credentials it holds in memory, or has a worker fetch them; they cross the socket and nothing
else. Standard library only, non-blocking: the supervisor's one wait watches these sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from pathlib import Path

from fluxagent.updates.client import MAX_LINE, SOCKET_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

READ_TIMEOUT = 10.0  # a peer that does not send its request line within this is dropped


class Conn:
    """One client connection: the request line as it arrives, then one answer."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.buf = b""
        self.deadline = now + READ_TIMEOUT
        self.request: str | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> bool:
        """Read what arrived; return True when the connection is finished (request complete or gone)."""
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            return True
        self.buf += data
        if b"\n" in self.buf or len(self.buf) > MAX_LINE:
            self.request = self.buf.split(b"\n", 1)[0][:MAX_LINE].decode("utf-8", "replace").strip()
            return True
        return False

    def answer(self, obj: dict[str, Any]) -> None:
        """Send one JSON line and close; a peer that went away is not an error."""
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.settimeout(1.0)
            self.sock.sendall(json.dumps(obj).encode() + b"\n")
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ControlServer:
    """The listening socket; accept() hands out Conns of permitted peers (same user or root)."""

    def __init__(self, state_dir: Path) -> None:
        """Bind `<state_dir>/control.sock` (0600); raises OSError (e.g. a path too long for a Unix socket)."""
        self.path = state_dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that was killed; we hold the lock, so it is stale
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        except OSError:
            self.sock.close()
            raise
        finally:
            os.umask(old)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self, now: float) -> Conn | None:
        """Accept one waiting connection (now: on the caller's clock); None when there is none or the
        peer is not permitted."""
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return None
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in (0, os.geteuid()):
            conn.close()
            return None
        conn.setblocking(False)
        return Conn(conn, now)

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def usage_error(request: str) -> dict[str, Any]:
    """Return the answer to a request the daemon does not know."""
    return {"ok": False, "code": "usage", "exit_code": 2, "message": f"unknown request {request[:40]!r}"}


class CredentialMemory:
    """The update credentials a worker fetched, kept in the supervisor's memory only (never on disk)
    until they expire within `margin` seconds; `expires_mono` is on CLOCK_BOOTTIME, system-wide."""

    def __init__(self) -> None:
        self._answer: dict[str, Any] | None = None

    def get(self, margin: float) -> dict[str, Any] | None:
        """Return the answer to hand out, or None when there is none valid for more than margin."""
        a = self._answer
        if a is not None and float(a["expires_mono"]) - time.clock_gettime(time.CLOCK_BOOTTIME) > margin:
            return a
        self._answer = None
        return None

    def put(self, answer: dict[str, Any]) -> None:
        """Keep a successful answer a worker reported."""
        if answer.get("ok") and isinstance(answer.get("expires_mono"), int | float):
            self._answer = answer
