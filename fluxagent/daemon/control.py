"""The daemon's local control socket: `fluxagent credentials` asks the running daemon.

The daemon holds the state lock (seq, spool, ledger) for as long as it runs, so a credentials
request from another process cannot seal a message itself. It asks the daemon instead over
`<state_dir>/control.sock` (a Unix socket in the 0700 state dir; the peer must be the same user
or root). The daemon answers from its in-memory CredentialCache; the credentials cross the socket
and nothing else. One JSON line each way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fluxagent.errors import FluxError
from fluxagent.updates.client import MAX_LINE, SOCKET_NAME
from fluxagent.updates.credentials import Credential, CredentialCache, fetch, monotonic
from fluxagent.updates.helpers import boot_id, cleanup_apt

if TYPE_CHECKING:
    from fluxagent.config import Config
    from fluxagent.delivery import Engine





Handler = Callable[[str], dict[str, Any]]


class ControlServer:
    """Serves requests on the control socket from a background thread until closed."""

    def __init__(self, state_dir: Path, handler: Handler) -> None:
        self.path = state_dir / SOCKET_NAME
        self.handler = handler
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a daemon that was killed; we hold the lock, so it is stale
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fluxagent-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
                if uid not in (0, os.geteuid()):
                    return
                request = conn.makefile("rb").readline(MAX_LINE).decode().strip()
                try:
                    answer = self.handler(request)
                except FluxError as exc:
                    answer = {"ok": False, "code": exc.code, "exit_code": exc.exit_code, "message": exc.message}
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except (OSError, ValueError):
                return

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def credential_answer(cred: Credential) -> dict[str, Any]:
    """Return the socket answer carrying cred (the monotonic clock is system-wide, so it travels)."""
    return {"ok": True, "username": cred.username, "secret": cred.secret, "registry": cred.registry,
            "expires_mono": cred.expires_mono, "expires_utc": cred.expires_utc}






class DaemonUpdates:
    """What the daemon adds for update credentials: the control socket, and removing the apt entry
    when it expires (on a timer thread, so the main loop's waits stay as they are)."""

    def __init__(self, engine: Engine, engine_lock: threading.RLock, config: Callable[[], Config],
                 log: Callable[[], Any]) -> None:
        """Serve credentials fetched through engine (under engine_lock); config and log are read per use,
        so a reload reaches them."""
        self._engine_lock = engine_lock
        self._config = config
        self._log = log
        self.cache = CredentialCache(lambda: fetch(engine, monotonic), monotonic, config().updates.min_remaining)
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        self._closed = False
        self.rearm()
        self.server: ControlServer | None = None
        try:
            self.server = ControlServer(config().instance.state_dir, self.handle)
        except OSError as exc:  # e.g. a state dir path too long for a Unix socket: the agent still runs
            log().error("credentials.control_socket_unavailable", error=exc.strerror or str(exc),
                        effect="`fluxagent credentials` cannot reach this daemon")

    def handle(self, request: str) -> dict[str, Any]:
        """Answer one control request: `credentials` (from memory, or fetched) or `wake`."""
        if request == "credentials":
            with self._engine_lock:
                self.cache.margin = self._config().updates.min_remaining
                return credential_answer(self.cache.get())
        if request == "wake":  # an apt entry was written: remove it when it expires
            self.rearm()
            return {"ok": True}
        return {"ok": False, "code": "usage", "exit_code": 2, "message": f"unknown request {request[:40]!r}"}

    def rearm(self) -> None:
        """Remove the apt entry if it has expired, otherwise set a timer for when it does."""
        due = self.tick()
        with self._timer_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if due is not None and not self._closed:
                self._timer = threading.Timer(due + 0.05, self.rearm)
                self._timer.daemon = True
                self._timer.start()

    def tick(self) -> float | None:
        """Remove the apt entry if it has expired; return seconds until it is due, or None."""
        try:
            cfg = self._config()
            done = cleanup_apt(cfg.instance.state_dir, cfg.updates.apt_auth_file, monotonic(), boot_id())
        except FluxError as exc:
            self._log().error("credentials.apt_cleanup_failed", error=exc.message)
            return None
        if done.removed:
            self._log().info("credentials.apt_entry_removed")
        return done.due_in

    def close(self) -> None:
        """Stop serving the control socket and the removal timer."""
        with self._timer_lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
        if self.server is not None:
            self.server.close()
