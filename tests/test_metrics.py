"""metrics.prom: the pure renderer, node_exporter reading it, and the daemon writing it each step."""

from __future__ import annotations

import io
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import fixed_world
from packaging_util import require_tool

from fluxagent import logs
from fluxagent.daemon.agent import Agent
from fluxagent.daemon.metrics import METRICS_FILE, MetricsWriter, render
from fluxagent.testing.server import Fault
from fluxagent.testing.workspace import make_workspace


def status(**over: Any) -> dict[str, Any]:
    """Return a status dict shaped like `collect_status`'s."""
    st: dict[str, Any] = {
        "license": {"state": "valid", "license_id": "FB-1", "expires_at": 1900000000, "grace_until": None,
                    "checked_at": 1800000000},
        "clock_skew": False,
        "kinds": {
            "license": {"last_delivered": 1800000000, "next_due": 1800021600, "consecutive_failures": 0,
                        "last_error": None},
            "heartbeat": {"last_delivered": None, "next_due": None, "consecutive_failures": 3,
                          "last_error": "HTTP 503"},
        },
        "spool": {"depth": 4, "by_kind": {"heartbeat": 4}, "bytes": 2400, "superseded": 2,
                  "dropped_overflow": 1, "corrupt": 0},
        "state_dir": "/var/lib/fluxagent",
        "now": 1800000100,
    }
    st.update(over)
    return st


def samples(text: str) -> dict[str, str]:
    """Return {metric{labels}: value} of the sample lines of a textfile."""
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_render_reports_each_kind_spool_drops_license_state_and_skew() -> None:
    s = samples(render(status()))
    assert s['fluxagent_last_success_timestamp_seconds{kind="license"}'] == "1800000000"
    assert s['fluxagent_last_success_timestamp_seconds{kind="heartbeat"}'] == "0"
    assert s['fluxagent_consecutive_failures{kind="heartbeat"}'] == "3"
    assert s["fluxagent_spool_messages"] == "4"
    assert s["fluxagent_spool_bytes"] == "2400"
    assert s['fluxagent_spool_dropped_total{reason="overflow"}'] == "1"
    assert s['fluxagent_spool_dropped_total{reason="superseded"}'] == "2"
    assert s["fluxagent_license_expiry_timestamp_seconds"] == "1900000000"
    assert s["fluxagent_clock_skew"] == "0"
    states = {k: v for k, v in s.items() if k.startswith("fluxagent_license_state")}
    assert [k for k, v in states.items() if v == "1"] == ['fluxagent_license_state{state="valid"}']
    assert len(states) == 8  # the seven protocol states and "unknown"


def test_render_maps_a_missing_or_strange_license_state_to_unknown() -> None:
    s = samples(render(status(license={"state": 'bad"\nstate'}, clock_skew=True)))
    assert s['fluxagent_license_state{state="unknown"}'] == "1"
    assert s['fluxagent_license_state{state="valid"}'] == "0"
    assert s["fluxagent_clock_skew"] == "1"


def test_render_declares_help_and_type_once_per_family() -> None:
    text = render(status())
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    for name in {k.split("{")[0] for k in samples(text)}:
        assert name in types


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real node_exporter on loopback with only the textfile collector; yields (directory, URL)."""
    exe = require_tool("prometheus-node-exporter")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    port = _free_port()
    proc = subprocess.Popen([exe, "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textdir}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield textdir, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_node_exporter_reads_the_rendered_file_without_a_scrape_error(node_exporter: tuple[Path, str]) -> None:
    textdir, url = node_exporter
    (textdir / "fluxagent.prom").write_text(render(status(), build={"version": "0.2.0", "python": "3.11.2"},
                                                   deliveries={"heartbeat": {"delivered": 4, "retry": 1}}))
    body = httpx.get(url, timeout=10).text
    assert "node_textfile_scrape_error 0" in body
    assert 'fluxagent_license_state{state="valid"} 1' in body
    assert 'fluxagent_consecutive_failures{kind="heartbeat"} 3' in body
    assert 'fluxagent_build_info{python="3.11.2",version="0.2.0"} 1' in body
    assert 'fluxagent_deliveries_total{kind="heartbeat",outcome="retry"} 1' in body


def test_node_exporter_flags_a_broken_file(node_exporter: tuple[Path, str]) -> None:
    textdir, url = node_exporter
    (textdir / "fluxagent.prom").write_text(render(status()) + "fluxagent_spool_messages{ 1\n")
    assert "node_textfile_scrape_error 1" in httpx.get(url, timeout=10).text


def test_daemon_step_writes_metrics_and_counts_failures_during_an_outage(tmp_path: Path, reference_server) -> None:
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf, env={})
    srv = reference_server()
    ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
    now = [time.time()]
    with Agent(ws.cfg, clock=lambda: now[0]) as agent:
        agent.engine.deps.world = fixed_world()
        agent.step()
        path = ws.cfg.instance.state_dir / METRICS_FILE
        first = samples(path.read_text())
        assert first['fluxagent_license_state{state="valid"}'] == "1"
        assert int(first['fluxagent_last_success_timestamp_seconds{kind="heartbeat"}']) > 0
        assert first["fluxagent_spool_messages"] == "0"
        assert path.stat().st_mode & 0o777 == 0o644
        # two hours later the server is down: the heartbeat due is spooled, and its failure shows
        srv.inject(*[Fault.status(503) for _ in range(5)])
        now[0] += 2 * 3600
        agent.step()
        second = samples(path.read_text())
        assert second["fluxagent_spool_messages"] == "1"
        assert second['fluxagent_consecutive_failures{kind="heartbeat"}'] == "1"
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert "metrics.write_failed" not in events


def test_metrics_writer_logs_a_failing_write_once_and_its_recovery(workspace: Any) -> None:
    buf = io.StringIO()
    logs.configure("json", "info", stream=buf, env={})
    target = workspace.cfg.instance.state_dir / METRICS_FILE
    target.mkdir()  # os.replace cannot put a file over a directory
    writer = MetricsWriter(logs.get())
    assert writer.write(workspace.cfg, time.time()) is False
    assert writer.write(workspace.cfg, time.time()) is False
    target.rmdir()
    assert writer.write(workspace.cfg, time.time()) is True
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert events == ["metrics.write_failed", "metrics.write_recovered"]
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # no temp file left behind


def test_alert_examples_use_only_metrics_and_labels_the_renderer_writes() -> None:
    import re

    from packaging_util import PACKAGING

    rules = (PACKAGING / "prometheus" / "fluxagent-alerts.yml").read_text()
    text = render(status())
    written = {k.split("{")[0] for k in samples(text)}
    used = set(re.findall(r"\bfluxagent_[a-z_]+", rules))
    assert used and used <= written, used - written
    for name, label, value in re.findall(r'(fluxagent_[a-z_]+)\{(\w+)=~?"([^"]+)"\}', rules):
        for v in value.split("|"):
            assert f'{name}{{{label}="{v}"}}' in text or v in ("license", "digest"), (name, label, v)


def test_last_delivered_reads_only_appended_lines_and_agrees_with_a_full_scan_across_rotations(
        tmp_path: Path) -> None:
    from fluxagent.statedir.ledger import Ledger
    from fluxagent.status import LastDelivered, _last_per_kind

    ledger = Ledger(tmp_path / "ledger", max_segment_bytes=2048, max_segments=3)
    reader = LastDelivered(tmp_path / "ledger")
    assert reader.get() == {}
    kinds = ("heartbeat", "license", "digest", "heartbeat", "credentials")
    offsets = []
    for i in range(60):
        kind = kinds[i % len(kinds)]
        event = "sent" if i % 7 else "rejected"  # a rejected message is not a delivery
        ledger.append(now=1_800_000_000 + i, event=event, kind=kind, outcome="delivered" if i % 7 else "rejected",
                      endpoint=f"/v1/{kind}", seq=i + 1, payload=b'{"v":1}')
        assert reader.get() == _last_per_kind(tmp_path / "ledger"), f"after entry {i + 1}"
        offsets.append((reader.segment, reader.offset))
    assert len({seg for seg, _ in offsets}) > 2, "the ledger never rotated: the test proves less than it says"
    same_segment = [b for a, b in itertools.pairwise(offsets) if a[0] == b[0]]
    assert same_segment and all(off > 0 for _, off in same_segment)
    # many entries between two calls: the newest segment is a new file, already longer than the old offset
    for i in range(60, 90):
        kind = ("license", "digest", "heartbeat")[i % 3] if i < 88 else "credentials"
        ledger.append(now=1_800_000_000 + i, event="sent", kind=kind, outcome="delivered", endpoint=f"/v1/{kind}",
                      seq=i + 1, payload=b'{"v":1}' * (1 + i % 5))
    assert reader.get() == _last_per_kind(tmp_path / "ledger")
    # a torn last line (a write in progress) is left for the next call, not parsed half
    newest = sorted((tmp_path / "ledger").glob("*.jsonl"))[-1]
    before = reader.get()
    with newest.open("ab") as f:
        f.write(b'{"n": 61, "half a li')
    assert reader.get() == before


def test_the_next_process_resumes_reading_the_ledger_where_the_last_one_stopped(
        tmp_path: Path, reference_server) -> None:
    # each daemon event is a worker process of its own: the last delivery per kind is kept in a
    # state file with the ledger position, so a worker reads only what was appended since
    from fluxagent.daemon.metrics import LAST_DELIVERED_FILE
    from fluxagent.status import _last_per_kind

    srv = reference_server()
    ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
    now = [time.time()]
    with Agent(ws.cfg, clock=lambda: now[0]) as agent:
        agent.engine.deps.world = fixed_world()
        agent.step()
    kept = json.loads((ws.cfg.instance.state_dir / LAST_DELIVERED_FILE).read_text())
    assert kept["offset"] > 0 and set(kept["last"]) == {"license", "heartbeat", "digest"}
    assert kept["last"] == _last_per_kind(ws.cfg.instance.state_dir / "ledger")
    # a mark no full scan of this ledger would find: it survives only if the next worker resumes
    kept["last"]["credentials"] = {"ts": 1, "seq": 0, "ledger_n": 0}
    (ws.cfg.instance.state_dir / LAST_DELIVERED_FILE).write_text(json.dumps(kept))
    now[0] += 2 * 3600
    with Agent(ws.cfg, clock=lambda: now[0]) as agent:  # the next worker
        agent.engine.deps.world = fixed_world()
        agent.step()
    later = json.loads((ws.cfg.instance.state_dir / LAST_DELIVERED_FILE).read_text())
    assert later["offset"] > kept["offset"] and later["last"]["heartbeat"]["ts"] > kept["last"]["heartbeat"]["ts"]
    assert later["last"]["credentials"] == {"ts": 1, "seq": 0, "ledger_n": 0}
