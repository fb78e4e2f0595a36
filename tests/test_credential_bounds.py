"""Update credentials are short-lived by contract: a receipt granting more than 24 h is a bad receipt."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxagent.statedir.ledger import Ledger
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import make_workspace
from fluxagent.wire.receipts import MAX_CREDENTIALS_TTL
from tests.conftest import run_cli


@pytest.mark.parametrize("ttl", [MAX_CREDENTIALS_TTL + 1, 400 * 86400, 10**15, 2**53 - 1])
def test_credentials_living_longer_than_24_hours_are_a_bad_receipt_and_the_request_is_ledgered(
        tmp_path: Path, ttl: int) -> None:
    with ReferenceServer(credentials_ttl=ttl) as srv:
        w = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        cfg = str(w.root / "fluxagent.toml")
        assert run_cli("--config", cfg, "run", "--once").returncode == 0
        done = run_cli("--config", cfg, "credentials")
        sent = [r for r in srv.received if r.endpoint == "/v1/update-credentials"]
    assert done.returncode == 69, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "expires_in" in done.stderr
    assert len(sent) == 1
    creds = [e for e in Ledger(w.cfg.instance.state_dir / "ledger", readonly=True).entries() if e.kind == "credentials"]
    assert [(e.seq, e.http_status) for e in creds] == [(sent[0].payload["seq"], 200)]  # type: ignore[index]
    assert creds[0].detail is not None and "bad_receipt" in creds[0].detail


def test_credentials_living_24_hours_are_handed_out(tmp_path: Path) -> None:
    with ReferenceServer(credentials_ttl=MAX_CREDENTIALS_TTL) as srv:
        w = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        cfg = str(w.root / "fluxagent.toml")
        assert run_cli("--config", cfg, "run", "--once").returncode == 0
        done = run_cli("--config", cfg, "credentials")
    assert done.returncode == 0, done.stderr
