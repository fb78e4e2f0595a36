"""metrics.prom as Prometheus reads it: build_info, per kind and outcome delivery counters that only
grow, `run --once` refreshing the file; parsed with prometheus_client's own text parser."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from conftest import run_cli
from prometheus_client.parser import text_string_to_metric_families

from fluxagent import __version__
from fluxagent.daemon.metrics import COUNTS_FILE, METRICS_FILE, DeliveryCounts, build_labels, render
from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import make_workspace

STATUS: dict[str, Any] = {
    "license": {"state": "valid", "expires_at": 1900000000},
    "clock_skew": False,
    "kinds": {"license": {"last_delivered": 1800000000, "next_due": 1800021600, "consecutive_failures": 0}},
    "spool": {"depth": 0, "bytes": 0, "superseded": 0, "dropped_overflow": 0, "corrupt": 0},
    "now": 1800000100,
}


def families(text: str) -> dict[str, Any]:
    """Return {family name: family} as prometheus_client parses the text (raises on a format error)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Return {sorted labels: value} of the samples called name."""
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_rendered_file_parses_and_has_build_info_and_delivery_counters() -> None:
    text = render(STATUS, build={"version": "9.9.9", "python": "3.11.2"},
                  deliveries={"license": {"delivered": 3, "retry": 2}, "heartbeat": {"delivered": 7}})
    fams = families(text)
    assert fams["fluxagent_build_info"].type == "gauge"
    assert samples(text, "fluxagent_build_info") == {(("python", "3.11.2"), ("version", "9.9.9")): 1.0}
    assert fams["fluxagent_deliveries"].type == "counter"
    assert samples(text, "fluxagent_deliveries_total") == {
        (("kind", "heartbeat"), ("outcome", "delivered")): 7.0,
        (("kind", "license"), ("outcome", "delivered")): 3.0,
        (("kind", "license"), ("outcome", "retry")): 2.0,
    }
    assert {"fluxagent_license_state", "fluxagent_spool_messages", "fluxagent_spool_dropped"} <= set(fams)


def test_build_info_names_this_version_and_python() -> None:
    assert build_labels() == {"version": __version__, "python": platform.python_version()}


def _append(ledger: Ledger, kind: str, outcome: str, n: int) -> None:
    for _ in range(n):
        ledger.append(now=1800000000, event="sent", kind=kind, outcome=outcome, payload=b"x" * 200)


def test_delivery_counts_read_only_new_entries_persist_and_never_shrink_when_segments_drop(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger", max_segment_bytes=4096, max_segments=4)
    _append(ledger, "heartbeat", "delivered", 10)
    _append(ledger, "heartbeat", "retry", 2)
    assert len(list(ledger.entries())) == 12
    assert DeliveryCounts(tmp_path).update() == {"heartbeat": {"delivered": 10, "retry": 2}}
    for _ in range(6):  # steps of a daemon: each writes metrics; the oldest segments are dropped meanwhile
        _append(ledger, "heartbeat", "delivered", 5)
        DeliveryCounts(tmp_path).update()  # a new process each time: starts from the persisted counts
    assert len(list(ledger.entries())) < 42
    counts = DeliveryCounts(tmp_path)
    assert counts.update() == {"heartbeat": {"delivered": 40, "retry": 2}}
    assert counts.update() == {"heartbeat": {"delivered": 40, "retry": 2}}  # nothing new, nothing added
    record = json.loads((tmp_path / COUNTS_FILE).read_text())
    assert record["v"] == 1 and record["through_n"] == max(e.n for e in ledger.entries())


def test_run_once_refreshes_metrics_prom_with_counters(tmp_path: Path) -> None:
    with ReferenceServer() as srv:
        ws = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        done = run_cli("--config", str(ws.root / "fluxagent.toml"), "run", "--once")
        assert done.returncode == 0, done.stderr
    text = (ws.cfg.instance.state_dir / METRICS_FILE).read_text()
    delivered = samples(text, "fluxagent_deliveries_total")
    for kind in ("license", "heartbeat", "digest"):
        assert delivered[(("kind", kind), ("outcome", "delivered"))] == 1.0
    assert samples(text, "fluxagent_build_info") == {(("python", platform.python_version()),
                                                       ("version", __version__)): 1.0}
    last = samples(text, "fluxagent_last_success_timestamp_seconds")
    assert all(v > 0 for v in last.values()) and len(last) == 3
