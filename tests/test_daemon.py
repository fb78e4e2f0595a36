"""`fluxagent run` as a real process: sd_notify on a real datagram socket, signals, the lock,
journald log lines, `run --once` exit codes and `status` on the state it leaves."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
from agentkit import Daemon, NotifySocket, clean_env, config_of, delivered, rewrite, sent_seqs, wire
from conftest import run_cli
from netutil import closed_port

from fluxagent.schema.shipped import shipped
from fluxagent.statedir.state import encode_json
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import Workspace


@pytest.fixture
def server(keys: list[nacl.signing.SigningKey], reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server(signing_keys=keys)
    yield srv


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer, keys: list[nacl.signing.SigningKey]) -> Workspace:
    return wire(tmp_path / "ws", server, keys, server={"connect_timeout": "1s", "read_timeout": "5s"})


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()




def cli(ws: Workspace, *args: str) -> tuple[int, str, str]:
    done = run_cli("--config", str(config_of(ws)), *args, env=clean_env())
    return done.returncode, done.stdout, done.stderr


def test_sd_notify_sequence_ready_status_watchdog_reloading_stopping_on_a_real_socket(
    ws: Workspace, notify: NotifySocket, daemons: list[Daemon]
) -> None:
    env = clean_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="300000")
    d = Daemon(config_of(ws), env=env)
    daemons.append(d)
    ready = notify.wait_for("READY", "1")
    assert ready["STATUS"].startswith("license ")
    # STATUS after each step; the first cycle may take more than one step (half the watchdog interval each)
    notify.wait_for("STATUS", "license valid; spool 0")
    notify.wait_for("WATCHDOG", "1")
    notify.wait_for("WATCHDOG", "1")  # from the idle loop, at half the watchdog interval
    d.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1")
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < now_usec - int(reloading["MONOTONIC_USEC"]) < 10_000_000
    notify.wait_for("READY", "1")
    d.signal(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING", "1")
    assert stopping["STATUS"] == "stopping"
    assert d.wait() == 0
    order = [k for m in notify.messages for k in ("READY", "RELOADING", "STOPPING") if k in m]
    assert order == ["READY", "RELOADING", "READY", "STOPPING"]


def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_new_one_is_taken(
    ws: Workspace, notify: NotifySocket, daemons: list[Daemon]
) -> None:
    d = Daemon(config_of(ws), env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    daemons.append(d)
    notify.wait_for("READY", "1")
    good = config_of(ws).read_text()
    config_of(ws).write_text(good.replace("[schedule]", "[schedule]\nhartbeat = \"2h\""))  # a typo
    d.signal(signal.SIGHUP)
    failed = d.wait_event("config.reload_failed")
    assert "schedule.hartbeat" in failed["error"] and failed["keeping"] == "previous configuration"
    notify.wait_for("READY", "1")
    assert d.proc.poll() is None
    config_of(ws).write_text(good)
    rewrite(config_of(ws), schedule={"heartbeat": "2h"}, log={"level": "warning"})
    d.signal(signal.SIGHUP)
    reloaded = d.wait_event("config.reloaded")
    assert reloaded["changed"] == ["log", "schedule"]
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    # the new log level was taken: the info line of the stop is gone
    assert not d.events("agent.stopping")


def test_journald_gets_json_lines_with_priority_prefixes(
    ws: Workspace, daemons: list[Daemon], server: ReferenceServer
) -> None:
    server.inject(Fault.status(503, endpoint="heartbeat"))
    d = Daemon(config_of(ws), env=clean_env(JOURNAL_STREAM="8:4242"))
    daemons.append(d)
    d.wait_event("delivery.outage_started")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert d.lines and all(re.match(r"^<[0-7]>\{", line) for line in d.lines), d.lines
    prefixes = {json.loads(line[3:])["event"]: line[:3] for line in d.lines}
    assert prefixes["agent.started"] == "<6>" and prefixes["delivery.outage_started"] == "<4>"


def test_sigterm_finishes_the_request_in_flight_then_stops_before_the_next_message(
    ws: Workspace, daemons: list[Daemon], server: ReferenceServer
) -> None:
    server.inject(Fault.delay(1.0, endpoint="license"))
    d = Daemon(config_of(ws))
    daemons.append(d)
    d.wait_event("digest.spooled")
    assert server.wait_arrival("/v1/license")  # the license request is now waiting for its answer
    t = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - t < 5
    assert [r.endpoint for r in server.received] == ["/v1/license"]
    assert sent_seqs(ws.cfg) == [1]
    assert sorted(p.name for p in (ws.cfg.instance.state_dir / "spool" / "new").iterdir()) == [
        f"{2:020d}-heartbeat.json", f"{3:020d}-digest.json"]
    assert d.events("agent.stopping")[0]["spool"] == 2


def test_idle_daemon_stops_on_sigterm_at_once(ws: Workspace, notify: NotifySocket, daemons: list[Daemon]) -> None:
    d = Daemon(config_of(ws), env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    daemons.append(d)
    notify.wait_for("STATUS", "license valid; spool 0")
    t = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert time.monotonic() - t < 1.5


def test_second_instance_exits_75_while_the_first_holds_the_lock(
    ws: Workspace, notify: NotifySocket, daemons: list[Daemon]
) -> None:
    d = Daemon(config_of(ws), env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    daemons.append(d)
    notify.wait_for("READY", "1")
    for args in (["run"], ["run", "--once"]):
        code, _out, err = cli(ws, *args)
        assert code == 75, err
        assert "another fluxagent holds" in err and str(ws.cfg.instance.state_dir / "lock") in err
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert cli(ws, "run", "--once")[0] == 0  # the lock is free again


# ---- run --once exit codes ----


def test_run_once_exits_0_when_everything_was_delivered(ws: Workspace, server: ReferenceServer) -> None:
    code, _out, err = cli(ws, "run", "--once")
    assert code == 0, err
    assert [p["seq"] for p in delivered(server)] == [1, 2, 3]


def test_run_once_exits_69_when_the_server_is_unavailable(ws: Workspace) -> None:
    rewrite(config_of(ws), server={"url": f"http://127.0.0.1:{closed_port()}"})
    code, _out, err = cli(ws, "run", "--once")
    assert code == 69, err


def test_run_once_exits_1_when_the_server_rejects_a_message(ws: Workspace, server: ReferenceServer) -> None:
    server.inject(Fault.status(400, endpoint="heartbeat"))
    code, _out, err = cli(ws, "run", "--once")
    assert code == 1, err
    assert [r.status for r in server.received] == [200, 400, 200]


def test_run_once_exits_with_the_source_errors_code_when_a_message_could_not_be_built(
    ws: Workspace, server: ReferenceServer
) -> None:
    rewrite(config_of(ws), platform={"database": f"sqlite:///{ws.root / 'missing.db'}"})
    code, out, err = cli(ws, "run", "--once")
    assert code == 78, err  # db_missing: a configuration error, as in preview and validate
    assert [r.endpoint for r in server.received] == ["/v1/license"]  # what could be built went out
    assert '"heartbeat.not_sent"' in out


def test_run_without_an_identity_exits_78_and_says_to_run_init(ws: Workspace, tmp_path: Path) -> None:
    rewrite(config_of(ws), instance={"state_dir": str(tmp_path / "empty-state")})
    code, _out, err = cli(ws, "run", "--once")
    assert code == 78 and "init" in err


# ---- status on real state ----


def test_status_json_after_a_delivered_cycle(ws: Workspace) -> None:
    assert cli(ws, "run", "--once")[0] == 0
    code, out, _err = cli(ws, "status", "--json")
    assert code == 0
    st = json.loads(out)
    now = int(time.time())
    assert st["license"]["state"] == "valid" and st["license"]["license_id"] == "FB-DEMO-0001"
    assert st["clock_skew"] is False
    for kind in ("license", "heartbeat", "digest"):
        k = st["kinds"][kind]
        assert now - 60 <= k["last_delivered"] <= now + 1
        assert k["next_due"] > now and k["consecutive_failures"] == 0
    assert st["kinds"]["license"]["next_due"] >= now + 6 * 3600  # the license interval, lengthened or not
    assert st["spool"]["depth"] == 0 and st["spool"]["dropped_overflow"] == 0


def test_status_text_shows_an_outage_with_the_spool_and_the_failure(ws: Workspace) -> None:
    rewrite(config_of(ws), server={"url": f"http://127.0.0.1:{closed_port()}"})
    assert cli(ws, "run", "--once")[0] == 69
    code, out, _err = cli(ws, "status")
    assert code == 0
    assert "license:   offline" in out and "unreachable" in out  # the file is valid, the server not reached
    assert "spool:     3 unsent" in out
    [lic_line] = [line for line in out.splitlines() if line.startswith("license:") and "last delivered" in line]
    assert "last delivered never" in lic_line and "1 failures, last: connect" in lic_line
    st = json.loads(cli(ws, "status", "--json")[1])
    assert st["spool"]["by_kind"] == {"license": 1, "heartbeat": 1, "digest": 1}


def test_status_reads_state_while_the_daemon_runs(ws: Workspace, notify: NotifySocket,
                                                   daemons: list[Daemon]) -> None:
    d = Daemon(config_of(ws), env=clean_env(NOTIFY_SOCKET=str(notify.path)))
    daemons.append(d)
    notify.wait_for("STATUS", "license valid; spool 0")
    code, out, _err = cli(ws, "status", "--json")
    assert code == 0 and json.loads(out)["license"]["state"] == "valid"
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert os.path.exists(ws.cfg.instance.state_dir / "lock")


# ---- the ledger on the command line ----


def test_log_lists_entries_shows_one_exact_payload_and_verifies_the_chain(
    ws: Workspace, server: ReferenceServer
) -> None:
    assert cli(ws, "run", "--once")[0] == 0
    code, out, _err = cli(ws, "log")
    assert code == 0
    rows = out.splitlines()
    assert len(rows) == 4 and "schema_approved" in rows[0] and f"({shipped().newest.name} sha256:" in rows[0]
    assert all(" sent " in r and "delivered http 200" in r for r in rows[1:])
    code, out, _err = cli(ws, "log", "3")
    assert code == 0
    received = json.loads(server.received[1].body)
    exact = base64.b64decode(received["payload"]).decode()
    assert out.rstrip("\n").endswith(f"exact payload ({len(exact)} bytes):\n{exact}")
    listed = json.loads(cli(ws, "log", "--json")[1])
    assert [(e["n"], e["event"], e["kind"]) for e in listed] == [
        (1, "schema_approved", "schema"), (2, "sent", "license"), (3, "sent", "heartbeat"), (4, "sent", "digest")]
    code, out, _err = cli(ws, "log", "--verify")
    assert code == 0 and out.startswith("ledger ok: 4 entries")


def test_log_verify_says_where_a_tampered_ledger_breaks(ws: Workspace) -> None:
    assert cli(ws, "run", "--once")[0] == 0
    [segment] = (ws.cfg.instance.state_dir / "ledger").glob("*.jsonl")
    lines = segment.read_bytes().split(b"\n")
    first = json.loads(lines[0])
    first["ts"] -= 1  # still a well-formed entry, but no longer the one entry 2 chains to
    lines[0] = encode_json(first).rstrip(b"\n")
    segment.write_bytes(b"\n".join(lines))
    code, out, _err = cli(ws, "log", "--verify")
    assert code == 1 and out.startswith("ledger BROKEN")
    res = json.loads(cli(ws, "log", "--verify", "--json")[1])
    assert res["ok"] is False and res["first_bad_n"] == 1 and res["segment"] == segment.name
    assert "entry 1 was altered" in res["reason"]
