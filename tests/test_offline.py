"""Air-gapped round trip: `fluxagent export` → reference server answers → `fluxagent import`."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nacl.signing
import pytest
import structlog
from typer.testing import CliRunner

from fluxagent.cli.main import app
from fluxagent.offline import ANSWER_TYPE, BUNDLE_TYPE, PENDING_FILE
from fluxagent.statedir.ledger import Ledger, LedgerEntry
from fluxagent.testing.licenses import make_license
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.server_offline import OFFLINE_ENDPOINT, BundleRefused
from fluxagent.testing.server_protocol import LicensePolicy
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.wire import envelope


@pytest.fixture
def server(reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server()
    yield srv


def _ws(root: Path, srv: ReferenceServer) -> Workspace:
    return make_workspace(root, server_url=srv.url, vendor_keys=srv.signing_keys)


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer) -> Workspace:
    return _ws(tmp_path / "ws", server)


def cli(w: Workspace, *args: str) -> tuple[int, str, str]:
    """Run a fluxagent command in process (the console script's code path); return code, stdout, stderr."""
    try:
        done = CliRunner().invoke(app, ["--config", str(w.root / "fluxagent.toml"), *args])
    finally:
        structlog.reset_defaults()  # the commands logged to the runner's stream, closed now
    return done.exit_code, done.stdout, done.stderr


def export(w: Workspace, name: str = "bundle.json") -> bytes:
    out = w.root / name
    code, _, stderr = cli(w, "export", "--output", str(out))
    assert code == 0, stderr
    return out.read_bytes()


def ledger(w: Workspace) -> list[LedgerEntry]:
    """Return the ledger's message entries (not the schema approval the first produce records)."""
    return [e for e in Ledger(w.cfg.instance.state_dir / "ledger", readonly=True).entries() if e.kind != "schema"]


def license_shown(w: Workspace) -> tuple[str, str | None]:
    """Return the license (state, id) `fluxagent status --json` shows."""
    lic = json.loads(cli(w, "status", "--json")[1])["license"]
    return lic["state"], lic["license_id"]


def renewed_license(srv: ReferenceServer, w: Workspace, license_id: str = "FB-RENEWED-0002") -> bytes:
    now = int(time.time())
    return make_license(srv.signing_keys[1], license_id=license_id, bound_domain=w.cfg.instance.bound_domain,
                        issued_at=now - 60, expires_at=now + 2 * 365 * 86400)


def test_round_trip_delivers_every_message_and_updates_the_license_state(
    ws: Workspace, server: ReferenceServer
) -> None:
    server.license = LicensePolicy(state="grace", license_id="FB-DEMO-0001")
    bundle = export(ws)
    opened = envelope.open_envelope(bundle, [ws.cfg.server.vendor_keys[0], bytes(_ident_key(ws))], BUNDLE_TYPE)
    kinds = [json.loads(envelope.parse_envelope(m["envelope"].encode())[1])["body"] for m in opened.obj["messages"]]
    assert len(kinds) == 3 and server.received == []  # nothing went over the network
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 0, out + err
    assert "license (seq 1) delivered: license grace" in out
    assert license_shown(ws) == ("grace", "FB-DEMO-0001")
    recorded = json.loads((ws.cfg.instance.state_dir / "license-status.json").read_text())["receipt"]
    assert (recorded["state"], recorded["license_id"], recorded["source"]) == ("grace", "FB-DEMO-0001", "import")
    events = [(e.event, e.kind, e.seq) for e in ledger(ws)]
    assert events[:3] == [("exported", k, n) for k, n in (("license", 1), ("heartbeat", 2), ("digest", 3))]
    assert events[3:6] == [("imported", k, n) for k, n in (("license", 1), ("heartbeat", 2), ("digest", 3))]
    assert all(e.receipt_sha256 for e in ledger(ws)[3:6])
    assert json.loads((ws.cfg.instance.state_dir / PENDING_FILE).read_text())["requests"] == []
    assert cli(ws, "log", "--verify")[0] == 0
    shown = json.loads(cli(ws, "status", "--json")[1])
    assert all(shown["kinds"][k]["last_delivered"] for k in ("license", "heartbeat", "digest"))


def test_renewal_in_an_answer_installs_the_new_license_file_and_the_state_follows_it(
    ws: Workspace, server: ReferenceServer
) -> None:
    # the receipt still speaks of the old license; the renewed file decides until the server answers
    # for the new one (PROTOCOL §7 rule 1)
    server.license = LicensePolicy(state="grace", license_id="FB-DEMO-0001")
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(export(ws), license_file=renewed_license(server, ws)))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 0, out + err
    assert "license FB-RENEWED-0002 installed" in out
    assert b"FB-RENEWED-0002" in base64.b64decode(json.loads(ws.cfg.instance.license_file.read_bytes())["payload"])
    assert license_shown(ws) == ("valid", "FB-RENEWED-0002")
    on_disk = json.loads((ws.cfg.instance.state_dir / "license-status.json").read_text())  # what the platform reads
    assert (on_disk["state"], on_disk["license_id"]) == ("valid", "FB-RENEWED-0002")
    installed = ledger(ws)[-1]
    assert (installed.event, installed.kind, installed.outcome) == ("installed", "license", "installed")
    assert installed.payload_sha256 == hashlib.sha256(ws.cfg.instance.license_file.read_bytes()).hexdigest()


def _ident_key(w: Workspace) -> bytes:
    from fluxagent.statedir import identity

    return identity.load(w.cfg.instance.state_dir).public_key


def test_importing_the_same_answer_twice_changes_nothing(ws: Workspace, server: ReferenceServer) -> None:
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(export(ws)))
    assert cli(ws, "import", str(answer))[0] == 0
    before = ledger(ws)
    code, out, _ = cli(ws, "import", str(answer))
    assert code == 0 and "3 receipt(s) for requests not waiting here" in out
    assert ledger(ws) == before


def test_second_export_carries_only_new_messages_and_a_digest_without_lists_once_acknowledged(
    ws: Workspace, server: ReferenceServer
) -> None:
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(export(ws)))
    assert cli(ws, "import", str(answer))[0] == 0
    second = json.loads(envelope.parse_envelope(export(ws, "second.json"))[1])
    payloads = [json.loads(envelope.parse_envelope(m["envelope"].encode())[1]) for m in second["messages"]]
    assert [p["seq"] for p in payloads] == [4, 5, 6]
    assert payloads[2]["body"]["full"] is False  # the imported digest receipt acknowledged the root
    answer.write_bytes(server.answer_bundle(envelope_bytes := (ws.root / "second.json").read_bytes()))
    assert envelope_bytes and cli(ws, "import", str(answer))[0] == 0


def test_tampered_answer_is_refused_and_recorded(ws: Workspace, server: ReferenceServer) -> None:
    answer = json.loads(server.answer_bundle(export(ws)))
    before = license_shown(ws)
    payload = json.loads(base64.b64decode(answer["payload"]))
    payload["receipts"] = payload["receipts"][:1]
    answer["payload"] = base64.b64encode(envelope.canonical_json(payload)).decode()
    path = ws.root / "answer.json"
    path.write_text(json.dumps(answer))
    code, _, err = cli(ws, "import", str(path))
    assert code == 1 and "does not verify against the pinned vendor keys" in err
    assert license_shown(ws) == before
    assert len(json.loads((ws.cfg.instance.state_dir / PENDING_FILE).read_text())["requests"]) == 3
    last = ledger(ws)[-1]
    assert (last.event, last.kind, last.outcome) == ("refused", "answer", "refused")


def test_answer_signed_by_an_unpinned_key_is_refused(ws: Workspace, server: ReferenceServer) -> None:
    real = json.loads(base64.b64decode(json.loads(server.answer_bundle(export(ws)))["payload"]))
    forged = envelope.sign_envelope(ANSWER_TYPE, envelope.canonical_json(real), nacl.signing.SigningKey.generate())
    path = ws.root / "answer.json"
    path.write_bytes(forged)
    code, _, err = cli(ws, "import", str(path))
    assert code == 1 and "does not verify" in err


def test_answer_for_another_instance_is_refused(tmp_path: Path, ws: Workspace, server: ReferenceServer) -> None:
    other = _ws(tmp_path / "other", server)
    export(ws)
    before = license_shown(ws)
    server.license = LicensePolicy(state="revoked")
    path = ws.root / "answer.json"
    path.write_bytes(server.answer_bundle(export(other)))
    code, _, err = cli(ws, "import", str(path))
    assert code == 1 and "addressed to another instance" in err
    assert license_shown(ws) == before and before[0] != "revoked"


def test_renewed_license_for_another_domain_is_refused_and_the_old_one_kept(ws: Workspace,
                                                                             server: ReferenceServer) -> None:
    old = ws.cfg.instance.license_file.read_bytes()
    now = int(time.time())
    wrong = make_license(server.signing_keys[0], license_id="FB-X", bound_domain="elsewhere.example.org",
                         issued_at=now, expires_at=now + 86400)
    path = ws.root / "answer.json"
    path.write_bytes(server.answer_bundle(export(ws), license_file=wrong))
    code, _, err = cli(ws, "import", str(path))
    assert code == 1 and "renewed license file is not valid here" in err
    assert ws.cfg.instance.license_file.read_bytes() == old


def test_server_refuses_a_bundle_whose_signature_does_not_verify(ws: Workspace, server: ReferenceServer) -> None:
    bundle = json.loads(export(ws))
    bundle["signatures"][0]["sig"] = base64.b64encode(bytes(64)).decode()
    with pytest.raises(BundleRefused) as info:
        server.answer_bundle(json.dumps(bundle).encode())
    assert info.value.status == 401
    assert server.verifier.instances == {}  # nothing in it was processed


def test_server_answers_bundles_over_http_and_answers_an_exact_resend_again(
    ws: Workspace, server: ReferenceServer
) -> None:
    bundle = export(ws)
    with httpx.Client() as c:
        r = c.post(server.url + OFFLINE_ENDPOINT, content=bundle)
    assert r.status_code == 200
    resent = json.loads(envelope.parse_envelope(server.answer_bundle(bundle))[1])
    assert [i["status"] for i in resent["receipts"]] == [200, 200, 200]  # at-least-once, as online
    path = ws.root / "answer.json"
    path.write_bytes(r.content)
    assert cli(ws, "import", str(path))[0] == 0


def test_messages_the_server_refuses_are_ledgered_as_rejected_and_not_kept_waiting(
    tmp_path: Path, server: ReferenceServer
) -> None:
    w = make_workspace(tmp_path / "ws", server_url=f"http://localhost:{server.port}", vendor_keys=server.signing_keys)
    path = w.root / "answer.json"
    path.write_bytes(server.answer_bundle(export(w)))  # aud "localhost" is not this server's audience
    code, out, _ = cli(w, "import", str(path))
    assert code == 1 and "license (seq 1) rejected by the server: http 400: wrong_audience" in out
    assert [(e.event, e.outcome) for e in ledger(w)[3:]] == [("rejected", "rejected")] * 3
    assert json.loads((w.cfg.instance.state_dir / PENDING_FILE).read_text())["requests"] == []


def test_replaying_an_old_answer_does_not_roll_the_license_file_back(ws: Workspace, server: ReferenceServer) -> None:
    now = int(time.time())
    first, second = ws.root / "first.json", ws.root / "second.json"

    def lic(license_id: str, issued_at: int) -> bytes:
        return make_license(server.signing_keys[0], license_id=license_id, bound_domain=ws.cfg.instance.bound_domain,
                            issued_at=issued_at, expires_at=now + 365 * 86400)

    first.write_bytes(server.answer_bundle(export(ws, "b1.json"), license_file=lic("FB-RENEWED-0002", now - 120)))
    second.write_bytes(server.answer_bundle(export(ws, "b2.json"), license_file=lic("FB-RENEWED-0003", now - 60)))
    assert cli(ws, "import", str(first))[0] == 0
    assert cli(ws, "import", str(second))[0] == 0
    installed = ws.cfg.instance.license_file.read_bytes()
    code, out, err = cli(ws, "import", str(first))  # the older answer, replayed
    assert code == 1 and "not newer than the installed license" in err, out + err
    assert ws.cfg.instance.license_file.read_bytes() == installed
    assert license_shown(ws) == ("valid", "FB-RENEWED-0003")
    assert (ledger(ws)[-1].event, ledger(ws)[-1].outcome) == ("refused", "refused")
    code, out, err = cli(ws, "import", str(second))  # the same answer again: nothing to change, nothing refused
    assert code == 0 and "already installed" in out, out + err
    assert ws.cfg.instance.license_file.read_bytes() == installed


def _exported(w: Workspace) -> list[Path]:
    return sorted((w.cfg.instance.state_dir / "exported").iterdir())


def test_the_streamed_bundle_is_byte_for_byte_the_bundle_built_whole_over_the_exported_envelopes(
    ws: Workspace, server: ReferenceServer
) -> None:
    from fluxagent.statedir import identity
    from fluxagent.statedir.spool import read_entry

    bundle = export(ws)
    files = _exported(ws)
    assert [f.name.split("-")[1] for f in files] == ["license.json", "heartbeat.json", "digest.json"]
    obj = json.loads(envelope.parse_envelope(bundle)[1])
    assert [m["envelope"].encode() for m in obj["messages"]] == [read_entry(f).read_envelope() for f in files]
    key = identity.load(ws.cfg.instance.state_dir).signing_key
    assert bundle == envelope.sign_envelope(BUNDLE_TYPE, envelope.canonical_json(obj), key) + b"\n"


def test_a_large_digest_is_exported_from_its_spool_file_and_imported_by_its_summary(
    tmp_path: Path, server: ReferenceServer
) -> None:
    import sqlite3

    ws = _ws(tmp_path / "ws", server)
    db = Path(ws.cfg.platform.database.removeprefix("sqlite:///"))
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO servers (hostname, ip_address) VALUES (?, NULL)",
                     ((f"n{i}.bulk.example.net",) for i in range(40_000)))
    conn.commit()
    conn.close()
    bundle = export(ws)
    digest_file = _exported(ws)[-1]
    assert digest_file.read_bytes().startswith(b"fluxagent-spool/2 ")  # the streamed form, sent from its file
    assert len(bundle) > 1_500_000
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 0, out + err
    assert "digest (seq 3) delivered" in out
    imported = [e for e in ledger(ws) if e.event == "imported" and e.kind == "digest"]
    assert imported and imported[0].summary and imported[0].summary["servers"] >= 40_000
    assert _exported(ws) == []  # answered: nothing left waiting


def test_requests_exported_by_an_earlier_version_inline_in_exported_json_still_take_their_receipts(
    ws: Workspace, server: ReferenceServer
) -> None:
    from fluxagent.statedir.spool import read_entry

    bundle = export(ws)
    path = ws.cfg.instance.state_dir / PENDING_FILE
    doc = json.loads(path.read_text())
    inline = []
    for r in doc["requests"]:
        f = ws.cfg.instance.state_dir / "exported" / r.pop("file")
        r["envelope"] = read_entry(f).read_envelope().decode()
        f.unlink()
        inline.append(r)
    path.write_text(json.dumps({"requests": inline}))  # the 0.1.0 form
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 0, out + err
    assert [(e.event, e.kind) for e in ledger(ws)[3:]] == [("imported", k) for k in ("license", "heartbeat", "digest")]
    assert json.loads(path.read_text())["requests"] == []


def test_an_export_that_died_before_listing_its_requests_still_takes_their_receipts(
    ws: Workspace, server: ReferenceServer
) -> None:
    bundle = export(ws)
    (ws.cfg.instance.state_dir / PENDING_FILE).write_text('{"v": 2, "requests": []}')
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 0, out + err
    assert out.count("delivered") == 3


def test_a_damaged_exported_request_is_named_and_the_other_receipts_still_apply(
    ws: Workspace, server: ReferenceServer
) -> None:
    bundle = export(ws)
    heartbeat = _exported(ws)[1]
    heartbeat.write_bytes(heartbeat.read_bytes()[:40])
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 1
    assert f"exported/{heartbeat.name} is unreadable" in err and f"moved to spool/bad/{heartbeat.name}" in err
    assert (ws.cfg.instance.state_dir / "spool" / "bad" / heartbeat.name).exists()  # kept for a look
    assert "license (seq 1) delivered" in out and "digest (seq 3) delivered" in out
    assert "1 receipt(s) for requests not waiting here" in out


def test_an_exported_request_whose_file_went_missing_is_named_and_the_other_receipts_still_apply(
    ws: Workspace, server: ReferenceServer
) -> None:
    bundle = export(ws)
    license_file = _exported(ws)[0]
    license_file.unlink()
    answer = ws.root / "answer.json"
    answer.write_bytes(server.answer_bundle(bundle))
    code, out, err = cli(ws, "import", str(answer))
    assert code == 1 and f"exported/{license_file.name!r} is missing" in err
    assert "heartbeat (seq 2) delivered" in out and "digest (seq 3) delivered" in out
    assert json.loads((ws.cfg.instance.state_dir / PENDING_FILE).read_text())["requests"] == []
