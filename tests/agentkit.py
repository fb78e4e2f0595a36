"""Shared pieces of the delivery and daemon tests: a workspace wired to a reference server,
an injected clock, captured JSON logs, and readers of what the server and the ledger hold."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
import tomli_w
import trustme

from fluxagent import config
from fluxagent.config import Config
from fluxagent.daemon.agent import Agent
from fluxagent.statedir.ledger import Ledger, LedgerEntry
from fluxagent.testing.server import Received, ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.transport import HttpxTransport, Transport


def config_of(ws: Workspace) -> Path:
    """Return the config file of a workspace."""
    return ws.root / "fluxagent.toml"


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    """Return a server TLS context with a certificate for localhost issued by ca."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


def wire(root: Path, ref: ReferenceServer, keys: list[nacl.signing.SigningKey], /, *, now: float | None = None,
         **sections: dict[str, Any]) -> Workspace:
    """Create a workspace under root that talks to the reference server; `sections` update config tables."""
    ws = make_workspace(root, server_url=ref.url, vendor_keys=keys, now=now)
    if sections:
        ws.cfg = rewrite(ws.root / "fluxagent.toml", **sections)
    return ws


def rewrite(path: Path, **sections: dict[str, Any]) -> Config:
    """Update tables of the TOML config at path and return the loaded result."""
    doc = tomllib.loads(path.read_text())
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    path.write_text(tomli_w.dumps(doc))
    return config.load(path)


def no_env_transport(cfg: Config) -> Transport:
    """Build the real transport ignoring proxy variables of the environment running the tests."""
    return HttpxTransport(cfg.server, env={})


def make_agent(cfg: Config, clock: Callable[[], float] | None = None, **kw: Any) -> Agent:
    """Return an Agent on cfg with the real transport (proxy variables of the test run ignored)."""
    if clock is not None:
        kw["clock"] = clock
    return Agent(cfg, transport_factory=no_env_transport, **kw)


def payload_of(r: Received) -> dict[str, Any]:
    """Return the decoded payload object of a request the server received."""
    obj: dict[str, Any] = json.loads(base64.b64decode(json.loads(r.body)["payload"]))
    return obj


def delivered(server: ReferenceServer, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Return the payloads the server accepted (status 200), oldest first, optionally of one endpoint."""
    return [payload_of(r) for r in server.received
            if r.status == 200 and (endpoint is None or r.endpoint == endpoint)]


def ledger_entries(cfg: Config) -> list[LedgerEntry]:
    """Return every ledger entry of cfg's state dir, oldest first."""
    return list(Ledger(cfg.instance.state_dir / "ledger", readonly=True).entries())


def sent_seqs(cfg: Config, kind: str | None = None) -> list[int]:
    """Return the seq of every "sent" ledger entry (of kind), in ledger order."""
    return [e.seq for e in ledger_entries(cfg) if e.event == "sent" and (kind is None or e.kind == kind)
            and e.seq is not None]


def clean_env(**extra: str) -> dict[str, str]:
    """Return the test run's environment without variables that would change the agent's behaviour."""
    drop = ("FLUXAGENT_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
            "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self) -> None:
        # sun_path is short (108 bytes): a fresh directory under /tmp rather than pytest's deep tmp_path
        self.dir = Path(tempfile.mkdtemp(prefix="fa-notify-", dir="/tmp"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.messages: list[dict[str, str]] = []

    def wait_for(self, name: str, value: str | None = None, timeout: float = 15) -> dict[str, str]:
        """Receive until a message carries name (=value); return it. Raises TimeoutError."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {name} notification; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(msg)
            if name in msg and (value is None or msg[name] == value):
                return msg

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """`fluxagent run` as a real subprocess; its stdout lines are collected by a thread."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None,
                 tuned: list[str] | None = None) -> None:
        """tuned: run the supervisor module with these options (short deadlines) instead of `fluxagent run`."""
        argv = ([sys.executable, "-m", "fluxagent.daemon.supervisor", "--config", str(config_path), *tuned]
                if tuned is not None else
                [sys.executable, "-m", "fluxagent", "--config", str(config_path), "run", *args])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env or clean_env())
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Return the JSON log events printed so far (a `<N>` journald prefix is stripped)."""
        out = []
        for line in list(self.lines):
            text = line[3:] if line[:1] == "<" and line[2:3] == ">" else line
            if text.startswith("{"):
                event = json.loads(text)
                if name is None or event["event"] == name:
                    out.append(event)
        return out

    def wait_event(self, name: str, timeout: float = 15) -> dict[str, Any]:
        """Wait until the daemon logs event name; return it. Raises TimeoutError."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.events(name)
            if found:
                return found[-1]
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise TimeoutError(f"no {name} event; output:\n" + "\n".join(self.lines[-30:]))

    def children(self) -> list[int]:
        """Return the pids of the running workers (children of the supervisor)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the process is gone (a test that failed may leave it running)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
