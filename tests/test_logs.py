"""Logs: journald priority prefixes, console on a TTY, one warning per outage, and no secret in any line."""

from __future__ import annotations

import base64
import io
import json
import os
import ssl
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trustme

from fluxagent import logs
from fluxagent.agent import Agent
from fluxagent.demo import Workspace, make_workspace
from fluxagent.notify import Notifier
from fluxagent.testing.server import Fault, ReferenceServer
from tests.conftest import fixed_world, run_cli
from tests.netutil import closed_port
from tests.proxy import ConnectProxy

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


# ---- format ----

def test_under_journald_each_json_line_carries_its_syslog_priority() -> None:
    buf = io.StringIO()
    logs.configure("auto", "debug", stream=buf, env={"JOURNAL_STREAM": "8:12345"})
    log = logs.get()
    log.debug("d.e")
    log.info("i.e", n=1)
    log.warning("w.e")
    log.error("e.e")
    lines = buf.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    assert json.loads(lines[1][3:])["n"] == 1


def test_without_journald_lines_are_plain_json() -> None:
    buf = io.StringIO()
    logs.configure("auto", "info", stream=buf, env={})
    logs.get().warning("w.e", spool=3)
    assert json.loads(buf.getvalue())["spool"] == 3


def test_on_a_terminal_auto_format_is_console_not_json() -> None:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty, os.fdopen(master, "rb", buffering=0) as reader:
        logs.configure("auto", "info", stream=tty, env={"JOURNAL_STREAM": "8:1"})
        logs.get().info("heartbeat.sent", seq=7)
        tty.flush()
        text = reader.read(4096).decode()
    assert "heartbeat.sent" in text and "seq=7" in text
    assert not text.lstrip().startswith(("{", "<"))


def test_redaction_masks_secret_keys_and_passwords_inside_urls() -> None:
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf, env={})
    logs.get().info("x", secret="s3", password="p", proxy="http://u:hunter2@proxy:3128", signing_key="k")
    ev = events(buf.getvalue())[0]
    assert ev["secret"] == ev["password"] == ev["signing_key"] == "***"
    assert ev["proxy"] == "http://u:***@proxy:3128"


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


def rewrite(path: Path, **sections: dict[str, Any]) -> Path:
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
        rewrite(ws.root / "fluxagent.toml", server={"proxy": proxy.url, "ca_bundle": str(pem)})
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

    agent = Agent(config_mod.load(cfg_path), notifier=Notifier(env={}), clock=lambda: now[0])
    agent.engine.deps.world = fixed_world()
    try:
        agent.step()  # everything delivered through the proxy
        assert proxy.targets
        srv.inject(Fault.status(503), Fault.close(), Fault.rate_limited("120"), Fault.receipt("unpinned"),
                   Fault.status(503), Fault.status(400, body=b'{"error":"bad"}'))
        _drive(agent, now, 8, 2 * 3600)
        agent.engine.produce(["credentials"], now[0])  # short-lived update credentials come back in a receipt
        agent.engine.flush()
        # a reload with a broken proxy URL that holds a password, then one with the wrong proxy password
        agent.reload(rewrite(cfg_path, server={"proxy": f"gopher://agent:{PROXY_PASSWORD}@127.0.0.1:1"}))
        agent.reload(rewrite(cfg_path, server={"proxy": proxy.url.replace(PROXY_PASSWORD, WRONG_PROXY_PASSWORD)}))
        _drive(agent, now, 3, 2 * 3600)
        # a platform database whose URL holds a password
        db_url = f"postgresql://billing:{DB_PASSWORD}@127.0.0.1:{closed_port()}/fluxbilling"
        agent.reload(rewrite(cfg_path, platform={"database": db_url}, server={"proxy": proxy.url}))
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


def test_an_outage_warns_once_and_then_summarises_instead_of_warning_per_retry(tmp_path: Path) -> None:
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf, env={"JOURNAL_STREAM": "8:1"})
    now = [time.time()]
    with ReferenceServer(clock=lambda: now[0]) as srv:  # one clock: no skew warnings to count
        ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        agent = Agent(ws.cfg, notifier=Notifier(env={}), clock=lambda: now[0])
        agent.engine.deps.world = fixed_world()
        try:
            srv.inject(*[Fault.status(503) for _ in range(30)])
            _drive(agent, now, 30, 60)
            attempts = len([r for r in srv.received if r.status == 503])
            _drive(agent, now, 1, 60)
        finally:
            agent.close()
    lines = buf.getvalue().splitlines()
    warnings = [json.loads(line[3:])["event"] for line in lines if line.startswith("<4>")]
    assert attempts == 30
    assert warnings.count("delivery.outage_started") == 1
    assert len(warnings) <= 1 + attempts // 10  # a summary every tenth failure at most
    assert "delivery.recovered" in buf.getvalue()
