"""-v/--verbose and -q/--quiet: debug events where an operator troubleshoots, or warnings only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace


@pytest.fixture
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer() as srv:
        yield srv


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer) -> Workspace:
    return make_workspace(tmp_path / "ws", server_url=server.url, vendor_keys=server.signing_keys)


def run_once(ws: Workspace, *global_opts: str) -> tuple[int, list[dict[str, Any]]]:
    """Run `fluxagent [opts] run --once` (JSON logs on a pipe); return the exit code and the events."""
    env = {k: v for k, v in os.environ.items() if k not in ("FLUXAGENT_CONFIG", "FLUXAGENT_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-m", "fluxagent", "--config", str(ws.root / "fluxagent.toml"),
                           *global_opts, "run", "--once"], capture_output=True, text=True,
                          env=env | {"NO_PROXY": "127.0.0.1"}, timeout=60, check=False)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events


def test_verbose_logs_requests_proxy_queries_and_schedule_decisions_as_debug_events(ws: Workspace) -> None:
    code, events = run_once(ws, "-v")
    assert code == 0
    debug = {e["event"]: e for e in events if e["level"] == "debug"}
    assert {"http.proxy", "http.response", "db.query", "schedule.next_due"} <= set(debug), sorted(debug)
    assert debug["http.proxy"]["proxy"] == "none"
    assert debug["http.response"]["status"] == 200 and debug["http.response"]["ms"] >= 0
    assert debug["http.response"]["endpoint"].startswith("/v1/")
    queries = {e["name"]: e["rows"] for e in events if e["event"] == "db.query"}
    assert queries["active_clients"] == 1 and queries["servers"] == len(ws.data.servers)
    scheduled = {e["kind"]: e["next_in"] for e in events if e["event"] == "schedule.next_due"}
    assert set(scheduled) == {"license", "heartbeat", "digest"} and all(s > 0 for s in scheduled.values())


def test_without_verbose_no_debug_event_and_with_quiet_no_info_event(ws: Workspace) -> None:
    code, events = run_once(ws)
    assert code == 0 and events and not [e for e in events if e["level"] == "debug"]
    code, events = run_once(ws, "--quiet")
    assert code == 0 and not [e for e in events if e["level"] in ("debug", "info")]


def test_verbose_and_quiet_together_are_a_usage_error(ws: Workspace) -> None:
    code, _ = run_once(ws, "-v", "-q")
    assert code == 2


def test_debug_events_never_show_a_database_value_or_a_secret(ws: Workspace) -> None:
    _, events = run_once(ws, "--verbose")
    text = json.dumps(events)
    for _, hostname, ip, *_ in ws.data.servers[:50]:
        assert (hostname or "\0") not in text and (ip or "\0") not in text
    assert ws.data.clients[0][2] not in text  # a client's name column
