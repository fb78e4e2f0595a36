"""Faults whose trace must outlive the moment: a request that may have left the machine is ledgered,
a server's Retry-After holds across restarts and `run --once` runs, a kill leaves no temp files behind
for long, and SIGTERM right after `fluxagent run` starts is a graceful stop."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit import ledger_entries

from fluxagent.delivery import Deps, Engine
from fluxagent.statedir import identity
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.transport import HttpxTransport

T0 = 1_760_000_000


class ResetAfterRequest:
    """A loopback server that reads a whole HTTP request, then resets the connection (SO_LINGER 0)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(self._read_request(conn))
                # an RST instead of a FIN: the client sees ECONNRESET while waiting for the answer
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def resetting() -> Iterator[ResetAfterRequest]:
    srv = ResetAfterRequest()
    try:
        yield srv
    finally:
        srv.close()


def engine_for(ws: Workspace, clock: list[float]) -> Engine:
    return Engine(ws.cfg, identity.load(ws.cfg.instance.state_dir),
                  Deps(HttpxTransport(ws.cfg.server, env={}), lambda: clock[0]))


def test_connection_reset_after_the_request_was_written_is_ledgered_as_an_attempt(
    tmp_path: Path, resetting: ResetAfterRequest,
) -> None:
    ws = make_workspace(tmp_path / "ws", server_url=resetting.url, now=T0)
    clock = [float(T0)]
    engine = engine_for(ws, clock)
    [sealed] = engine.produce(["heartbeat"], clock[0])
    result = engine.flush()
    assert any(sealed.envelope in r for r in resetting.requests)  # the server read the whole request
    assert result.retry is not None and result.retry.sent is True, result.retry
    attempts = [e for e in ledger_entries(ws.cfg) if e.event == "attempt"]
    assert [(e.seq, e.outcome) for e in attempts] == [(sealed.obj["seq"], "retry")]
    assert engine.spool.depth() == 1  # still queued: at-least-once


def test_refused_connection_is_not_ledgered_because_nothing_left_the_machine(tmp_path: Path) -> None:
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as s:
        port = s.getsockname()[1]  # closed again below: nobody listens there
    ws = make_workspace(tmp_path / "ws", server_url=f"http://127.0.0.1:{port}", now=T0)
    clock = [float(T0)]
    engine = engine_for(ws, clock)
    engine.produce(["heartbeat"], clock[0])
    result = engine.flush()
    assert result.retry is not None and result.retry.sent is False
    assert [e.event for e in ledger_entries(ws.cfg) if e.event == "attempt"] == []
