"""The resident supervisor and its workers as real processes: the supervisor imports the standard
library only, a worker that overruns is stopped and counted, a worker that dies is one failed
step, a worker never outlives its supervisor, and both write one log format."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nacl.signing
import pytest
from agentkit import Daemon, NotifySocket, clean_env, config_of, ledger_entries, rewrite, sent_seqs, wire
from conftest import run_cli

from fluxagent import logfmt, logs
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import Workspace

NOT_IN_THE_SUPERVISOR = ("httpx", "ssl", "nacl", "sqlite3", "psutil", "structlog", "typer", "click", "asyncio")



@pytest.fixture
def server(keys: list[nacl.signing.SigningKey]) -> Iterator[ReferenceServer]:
    with ReferenceServer(signing_keys=keys, credentials_ttl=600) as srv:
        yield srv


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey]) -> Workspace:
    return wire(tmp_path / "ws", server, keys, server={"connect_timeout": "1s", "read_timeout": "60s"},
                log={"level": "debug"})




def ask(ws: Workspace, request: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(ws.cfg.instance.state_dir / "control.sock"))
        s.sendall(request.encode() + b"\n")
        answer: dict[str, object] = json.loads(s.makefile("rb").readline())
    return answer


def wait_for(cond: Callable[[], bool], timeout: float = 20) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_running_supervisor_has_imported_the_standard_library_only(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    d = Daemon(config_of(ws))
    daemons.append(d)
    d.wait_event("digest.sent", timeout=30)
    assert wait_for(lambda: bool(d.events("worker.finished")))
    d.signal(signal.SIGHUP)  # a reload and a credentials request: whatever the supervisor does by day
    d.wait_event("config.reloaded")
    assert ask(ws, "credentials")["ok"] is True
    answer = ask(ws, "modules")
    assert answer["pid"] == d.proc.pid
    modules = answer["modules"]
    assert isinstance(modules, list) and "fluxagent.daemon.supervisor" in modules
    loaded = sorted({m.split(".")[0] for m in modules} & set(NOT_IN_THE_SUPERVISOR))
    assert loaded == [], f"the supervisor imported {loaded}"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_worker_that_overruns_its_deadline_is_stopped_and_counted_as_a_failed_step(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(30, endpoint="license"))  # the step hangs on its first request
    d = Daemon(config_of(ws), tuned=["--worker-deadline", "3", "--step-backoff", "60"])
    daemons.append(d)
    overran = d.wait_event("worker.overran", timeout=30)
    assert overran["mode"] == "step" and overran["deadline"] == 3
    failed = d.wait_event("worker.failed", timeout=15)  # TERM, then KILL after the grace
    assert failed["outcome"] == "overran its deadline" and failed["failures"] == 1
    assert d.proc.poll() is None and d.children() == []
    done = run_cli("--config", str(config_of(ws)), "status", "--json", env=clean_env())
    daemon = json.loads(done.stdout)["daemon"]
    assert done.returncode == 0 and daemon["running"] and daemon["pid"] == d.proc.pid and daemon["failed_steps"] == 1
    assert daemon["last_worker"]["outcome"] == "overran its deadline" and daemon["last_worker"]["ok"] is False
    text = run_cli("--config", str(config_of(ws)), "status", env=clean_env()).stdout
    assert f"daemon:    running, pid {d.proc.pid}" in text and "overran its deadline" in text
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_worker_killed_mid_step_is_one_failed_step_and_the_next_step_delivers(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(30, endpoint="license"))
    d = Daemon(config_of(ws), tuned=["--step-backoff", "0.5"])
    daemons.append(d)
    d.wait_event("digest.spooled", timeout=30)
    [worker] = d.children()
    torn = ws.cfg.instance.state_dir / f".schedule.json.tmp-{worker}-0123abcd"  # as a kill mid-write leaves
    torn.write_bytes(b'{"v": 1, "lic')
    os.kill(worker, signal.SIGKILL)
    failed = d.wait_event("worker.failed")
    assert failed["outcome"] == "killed by SIGKILL" and failed["mode"] == "step"
    # the planted one at least: the kill may also have caught the worker writing a temp file of its own
    assert d.wait_event("state.stray_temp_removed")["files"] >= 1 and not torn.exists()
    server.faults.clear()
    d.wait_event("digest.sent", timeout=30)  # the next step resends the spooled messages
    assert d.proc.poll() is None
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    # a kill at any moment may lose a schedule write, so a kind may be built again: the new one supersedes
    assert {e.kind for e in ledger_entries(ws.cfg) if e.event == "sent"} == {"license", "heartbeat", "digest"}
    assert not list((ws.cfg.instance.state_dir / "spool" / "new").iterdir())
    assert len(d.events("agent.started")) == 1


def test_worker_dies_with_its_supervisor_and_the_next_start_recovers(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(30, endpoint="license"))
    d = Daemon(config_of(ws))
    daemons.append(d)
    d.wait_event("digest.spooled", timeout=30)
    [worker] = d.children()
    d.proc.kill()
    d.wait()
    assert wait_for(lambda: not alive(worker), 5), "the worker outlived its supervisor"
    server.faults.clear()
    again = Daemon(config_of(ws))  # takes the lock at once: the worker held it until it died
    daemons.append(again)
    again.wait_event("digest.sent", timeout=30)
    again.signal(signal.SIGTERM)
    assert again.wait() == 0
    # a kill at any moment may lose a schedule write, so a kind may be built again: the new one supersedes
    assert {e.kind for e in ledger_entries(ws.cfg) if e.event == "sent"} == {"license", "heartbeat", "digest"}
    assert not list((ws.cfg.instance.state_dir / "spool" / "new").iterdir())


def test_sigterm_during_a_stalled_request_stops_at_the_stop_deadline_keeping_the_message(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(60, endpoint="license"))  # the server never answers in time
    d = Daemon(config_of(ws), tuned=["--stop-deadline", "0.5"])
    daemons.append(d)
    d.wait_event("digest.spooled", timeout=30)
    assert server.wait_arrival("/v1/license")  # the license request now waits for an answer that never comes
    t = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert 0.5 <= time.monotonic() - t < 5
    [stopping] = d.events("agent.stopping")
    assert stopping["level"] == "warning" and "stop deadline" in stopping["forced"] and stopping["spool"] == 3
    assert sent_seqs(ws.cfg) == []  # resent by the next run


def test_sighup_while_a_worker_runs_reloads_once_it_is_done(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(1.5, endpoint="license"))
    notify = NotifySocket()
    try:
        d = Daemon(config_of(ws), env=clean_env(NOTIFY_SOCKET=str(notify.path)))
        daemons.append(d)
        d.wait_event("digest.spooled", timeout=30)
        rewrite(config_of(ws), schedule={"heartbeat": "2h"})
        d.signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        reloaded = d.wait_event("config.reloaded", timeout=30)
        assert reloaded["changed"] == ["schedule"]
        names = [e["event"] for e in d.events()]
        assert names.index("digest.sent") < names.index("config.reloaded")  # one worker at a time
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        notify.close()


def _without_timestamp(line: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<ts>", line)


@pytest.mark.parametrize(("fmt", "env"), [("json", {}), ("json", {"JOURNAL_STREAM": "8:1"}), ("console", {})])
def test_supervisor_and_worker_write_the_same_line_for_the_same_event(fmt: str, env: dict[str, str]) -> None:
    worker_out, supervisor_out = io.StringIO(), io.StringIO()
    fields = {"seq": 42, "reason": "connect: refused", "proxy": "http://u:pw-value@127.0.0.1:3128",
              "secret": "s3cr3t", "changed": ["log"], "retry_in": 30, "clock_skew": None}
    try:
        logs.configure(fmt, "info", stream=worker_out, env=env)
        logs.get().warning("delivery.outage_started", **fields)
        logs.get().debug("hidden.event")
    finally:
        logs.configure("json", "info", stream=io.StringIO(), env={})
    sup = logfmt.Logger(supervisor_out, fmt, "info", env)
    sup.warning("delivery.outage_started", **fields)
    sup.debug("hidden.event")
    worker_line, supervisor_line = worker_out.getvalue(), supervisor_out.getvalue()
    assert worker_line.count("\n") == 1 and "s3cr3t" not in worker_line and "pw-value" not in worker_line
    assert _without_timestamp(supervisor_line) == _without_timestamp(worker_line)
    assert re.search(r"\d\d:\d\d:\d\d\.\d{6}Z", supervisor_line)  # the same timestamp format, too


def test_supervisor_timestamps_are_what_structlog_writes() -> None:
    import datetime

    for t in (1_800_000_000.0, 1_800_000_000.5, 1_800_000_000.123456):
        expected = datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")
        assert logfmt.timestamp(t) == expected


def test_a_config_check_worker_killed_at_start_is_tried_again_and_the_daemon_comes_up(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    d = Daemon(config_of(ws))
    daemons.append(d)
    assert wait_for(lambda: bool(d.children()), 10)
    [checker] = d.children()
    os.kill(checker, signal.SIGKILL)
    failed = d.wait_event("worker.failed")
    assert failed["mode"] == "check" and failed["outcome"] == "killed by SIGKILL"
    d.wait_event("agent.started", timeout=30)
    d.wait_event("digest.sent", timeout=30)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0


def test_validate_beside_the_running_daemon_gets_a_fresh_signed_license_check_from_it(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    d = Daemon(config_of(ws))
    daemons.append(d)
    assert wait_for(lambda: bool(d.events("worker.finished")), 30)  # the first step is done: idle
    licenses = len([r for r in server.received if r.endpoint == "/v1/license"])
    done = run_cli("--config", str(config_of(ws)), "validate", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    live = checks["license server"]
    assert live["level"] == "ok" and live["reason"].startswith("by the running daemon: receipt verified"), live
    assert len([r for r in server.received if r.endpoint == "/v1/license"]) == licenses + 1  # a fresh check
    assert [e["mode"] for e in d.events("worker.started")][-1] == "license"
    assert [e.event for e in ledger_entries(ws.cfg)].count("sent") >= 4  # the daemon ledgered it, as `run` does


def test_a_credentials_request_arriving_while_a_step_runs_is_answered_after_that_step(
    ws: Workspace, server: ReferenceServer, daemons: list[Daemon]
) -> None:
    server.inject(Fault.delay(2.0, endpoint="license"))  # the first step is still busy when the request comes
    d = Daemon(config_of(ws))
    daemons.append(d)
    assert server.wait_arrival("/v1/license")
    answer = ask(ws, "credentials")
    assert answer["ok"] is True and answer["registry"], answer
    assert [e["mode"] for e in d.events("worker.started")][:2] == ["step", "credentials"]
