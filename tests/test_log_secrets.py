"""No secret reaches any log line: a full cycle with faults, through an authenticating proxy, with a
database URL holding a password, bad reloads, update credentials and the `run --once` command."""

from __future__ import annotations

import base64
import io
import json
import ssl
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme
from conftest import fixed_world, run_cli
from netutil import closed_port
from proxy import ConnectProxy

from fluxagent import logs
from fluxagent.daemon.agent import Agent, reload_config
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace

PROXY_PASSWORD = "Pr0xy-pass-5f1c9e"
WRONG_PROXY_PASSWORD = "Wr0ng-proxy-pass-77ab"
DB_PASSWORD = "Db-passw0rd-9c3e21"


def events(text: str) -> list[dict[str, Any]]:
    """Return the JSON log events in text (journald prefixes stripped)."""
    out = []
    for line in text.splitlines():
        body = line[3:] if line[:1] == "<" and line[2:3] == ">" else line
        if body.startswith("{"):
            out.append(json.loads(body))
    return out


# ---- a full cycle with faults, through an authenticating proxy ----

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for localhost and the CA file that trusts it."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ctx, pem


def rewrite_toml(path: Path, **sections: dict[str, Any]) -> Path:
    """Update tables of the TOML config at path; return path."""
    doc = tomllib.loads(path.read_text())
    for name, values in sections.items():
        doc[name].update(values)
    path.write_text(tomli_w.dumps(doc))
    return path


def key_forms(raw: bytes) -> set[str]:
    """Return the text forms a 32-byte key could take in a log line."""
    b64 = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return {raw.hex(), raw.hex().upper(), b64, b64.rstrip("="), url, url.rstrip("=")}


Cycle = tuple[Workspace, ReferenceServer, ConnectProxy, list[float]]


@pytest.fixture
def cycle(tmp_path: Path, tls: tuple[ssl.SSLContext, Path]) -> Iterator[Cycle]:
    """A workspace talking TLS to the reference server through an authenticating loopback proxy; one clock."""
    ctx, pem = tls
    now = [time.time()]
    with ReferenceServer(ssl_context=ctx, clock=lambda: now[0]) as srv, ConnectProxy("agent", PROXY_PASSWORD) as proxy:
        ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        rewrite_toml(ws.root / "fluxagent.toml", server={"proxy": proxy.url, "ca_bundle": str(pem)})
        yield ws, srv, proxy, now


def _drive(agent: Agent, now: list[float], steps: int, hop: float) -> None:
    for _ in range(steps):
        now[0] = max(now[0] + hop, agent.engine.retry_at)
        agent.step()


def test_no_secret_reaches_any_log_line_across_a_cycle_with_faults(
        cycle: Cycle) -> None:
    ws, srv, proxy, now = cycle
    cfg_path = ws.root / "fluxagent.toml"
    buf = io.StringIO()
    logs.configure("json", "debug", stream=buf, env={"JOURNAL_STREAM": "8:1"})
    from fluxagent import config as config_mod

    def worker(cfg: config_mod.Config) -> Agent:  # each event has a worker process and its Agent
        agent = Agent(cfg, clock=lambda: now[0])
        agent.engine.deps.world = fixed_world()
        return agent

    def reload(path: Path) -> None:  # what the reload's check worker does; the next events use the result
        nonlocal agent
        new = reload_config(agent.cfg, path, path.read_bytes(), agent.log)
        if new is not None:
            agent.close()
            agent = worker(new)

    agent = worker(config_mod.load(cfg_path))
    try:
        agent.step()  # everything delivered through the proxy
        assert proxy.targets
        srv.inject(Fault.status(503), Fault.close(), Fault.rate_limited("120"), Fault.receipt("unpinned"),
                   Fault.status(503), Fault.status(400, body=b'{"error":"bad"}'))
        _drive(agent, now, 8, 2 * 3600)
        agent.engine.produce(["credentials"], now[0])  # short-lived update credentials come back in a receipt
        agent.engine.flush()
        # a reload with a broken proxy URL that holds a password, then one with the wrong proxy password
        reload(rewrite_toml(cfg_path, server={"proxy": f"gopher://agent:{PROXY_PASSWORD}@127.0.0.1:1"}))
        reload(rewrite_toml(cfg_path, server={"proxy": proxy.url.replace(PROXY_PASSWORD, WRONG_PROXY_PASSWORD)}))
        _drive(agent, now, 3, 2 * 3600)
        # a platform database whose URL holds a password
        db_url = f"postgresql://billing:{DB_PASSWORD}@127.0.0.1:{closed_port()}/fluxbilling"
        reload(rewrite_toml(cfg_path, platform={"database": db_url}, server={"proxy": proxy.url}))
        _drive(agent, now, 2, 2 * 3600)
    finally:
        agent.close()
    cli = run_cli("--config", str(cfg_path), "run", "--once", env={"JOURNAL_STREAM": "8:1"})
    text = buf.getvalue() + cli.stdout + cli.stderr

    names = [e["event"] for e in events(text)]
    for expected in ("heartbeat.sent", "delivery.outage_started", "delivery.recovered", "credentials.sent",
                     "config.reload_failed", "heartbeat.not_sent"):
        assert expected in names, f"{expected} missing: the cycle did not go where this test looks"
    assert any(e["event"].endswith(".rejected") for e in events(text))
    ident = agent.ident
    secrets = {PROXY_PASSWORD, WRONG_PROXY_PASSWORD, DB_PASSWORD}
    secrets |= key_forms(bytes(ident.signing_key)) | key_forms(ident.digest_key)
    issued = srv.issued_credentials
    assert issued
    secrets |= {c.secret for c in issued}
    leaked = sorted(s for s in secrets if s in text)
    assert leaked == [], f"secrets in the log: {leaked}"
