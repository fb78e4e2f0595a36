"""Hostile local input: fuzzed configs through the whole CLI, damaged state files, hostile platform rows.

Each damaged file is either recovered (and the recovery logged) or refused with a message that
names the file and says what to do; the instance identity is never silently regenerated.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import base_config, fixed_world
from hostile import engine_config, ledger_events, make_engine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.capture import Events
from support.clock import Clock
from typer.testing import CliRunner

from fluxagent import collect, config
from fluxagent.cli.main import app
from fluxagent.delivery import LICENSE_STATUS_FILE, Deps, Engine
from fluxagent.errors import EXIT_CONFIG, FluxError, StateError
from fluxagent.license import record as license_store
from fluxagent.schema.approval import running_approved
from fluxagent.statedir import identity, state
from fluxagent.testing import sample
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.transport import HttpxTransport

RUNNER = CliRunner()
DEEP_JSON = b"[" * 100_000


def cli(*args: str) -> Any:
    """Invoke the CLI in-process; the result must never carry a Python exception or traceback."""
    result = RUNNER.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def server(reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server()
    yield srv


# ---- configuration fuzzing through the whole CLI ----

SECTIONS = {name: list(parsers) for name, parsers in config.SCHEMA.items()}
_scalars = st.one_of(
    st.text(max_size=40), st.integers(), st.floats(allow_nan=True), st.booleans(),
    st.sampled_from(["", " ", "\x00", "0s", "-1s", "1e400", "9" * 400, "99999999w", "https://", "http://[::1",
                     "sqlite:///", "sqlite:///\x00", "../" * 50, "\u202e", "a" * 5000]),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    """A TOML text: mostly well-formed documents with hostile values, sometimes damaged text."""
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 8))):
        section = draw(st.sampled_from([*SECTIONS, "extra"]))
        key = draw(st.sampled_from([*SECTIONS.get(section, ["x"]), "typo_key"]))
        top, _, sub = section.partition(".")
        table = doc.setdefault(top, {})
        table = table.setdefault(sub, {}) if sub and isinstance(table, dict) else table
        if isinstance(table, dict):
            table[key] = draw(_values)
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        text = "[instance]\n"
    damage = draw(st.sampled_from(["none", "none", "cut", "insert"]))
    if damage == "cut" and text:
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "insert":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(alphabet=string.printable + "\x00[]{}=\"'", max_size=12)) + text[at:]
    return text


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=toml_documents(), command=st.sampled_from(["preview", "status", "log"]))
def test_any_config_text_gives_exit_78_with_file_and_dotted_path_never_a_traceback(
    tmp_path: Path, text: str, command: str
) -> None:
    path = tmp_path / "fluxagent.toml"
    path.write_text(text, encoding="utf-8")
    result = cli("--config", str(path), command)
    try:
        config.load(path)
    except config.ConfigError as exc:
        assert result.exit_code == EXIT_CONFIG
        assert "config error" in result.output and str(path) in result.output
        for problem in exc.problems:
            assert problem.startswith(f"{path}: ")
            rest = problem[len(f"{path}: "):]
            assert rest.startswith(("TOML syntax", "not UTF-8")) or rest.split(":", 1)[0] in {
                f"{s}.{k}" for s, keys in SECTIONS.items() for k in [*keys, "typo_key"]
            } | {"instance.bound_domain", *SECTIONS, "extra", "platform.queries"} or ": unknown" in rest, problem
    else:
        # a valid document: the default state dir has no identity here, or the command just works
        assert result.exit_code in (0, 1, EXIT_CONFIG)


@pytest.mark.parametrize("text", [
    "x = " + "[" * 5000,
    "x = " + "{a = " * 5000,
    "[instance]\nbound_domain = " + "[" * 2000 + "]" * 2000,
    "\ufeff[instance]\n",
    "[instance]\nbound_domain = \"a\x00b\"\n",
])
def test_pathological_toml_is_a_config_error_not_a_traceback(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fluxagent.toml"
    path.write_text(text, encoding="utf-8")
    for command in ("preview", "status"):
        result = cli("--config", str(path), command)
        assert result.exit_code == EXIT_CONFIG and str(path) in result.output


def test_non_utf8_config_and_directory_as_config_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[instance]\nbound_domain = \"\xff\xfe\"\n")
    assert cli("--config", str(bad), "status").exit_code == EXIT_CONFIG
    result = cli("--config", str(tmp_path), "status")
    assert result.exit_code == EXIT_CONFIG and str(tmp_path) in result.output


# ---- the instance identity: refused with a remedy, never regenerated ----


@pytest.fixture
def workspace_cfg(tmp_path: Path, sample_db: Path) -> Path:
    """A config file with an initialized state dir; returns the config path."""
    state_dir = tmp_path / "state"
    path = tmp_path / "fluxagent.toml"
    path.write_text(tomli_w.dumps(base_config(state_dir, sample_db)), encoding="utf-8")
    assert cli("--config", str(path), "init").exit_code == 0
    return path


IDENTITY_DAMAGE = {
    "garbage": b"\x00\xffnot json",
    "truncated": b'{"format": 1, "instance_id": "3f1c',
    "empty": b"",
    "wrong_type": b"[1, 2, 3]",
    "bad_uuid": b'{"format": 1, "instance_id": "not-a-uuid"}',
    "deeply_nested": DEEP_JSON,
}


@pytest.mark.parametrize("damage", list(IDENTITY_DAMAGE))
def test_damaged_identity_is_refused_by_every_command_and_init_never_replaces_it(
    workspace_cfg: Path, damage: str
) -> None:
    state_dir = workspace_cfg.parent / "state"
    (state_dir / "identity.json").write_bytes(IDENTITY_DAMAGE[damage])
    keys = {n: (state_dir / n).read_bytes() for n in ("signing.key", "digest.key")}
    for command in ("preview", "init"):
        result = cli("--config", str(workspace_cfg), command)
        assert result.exit_code == EXIT_CONFIG
        assert "identity.json is damaged" in result.output and "restore it from a backup" in result.output
    assert (state_dir / "identity.json").read_bytes() == IDENTITY_DAMAGE[damage]
    assert {n: (state_dir / n).read_bytes() for n in keys} == keys


KEY_DAMAGE = {"truncated": b"\x01" * 16, "empty": b"", "too_long": b"\x01" * 33}


@pytest.mark.parametrize("damage", list(KEY_DAMAGE))
@pytest.mark.parametrize("name", ["signing.key", "digest.key"])
def test_damaged_key_file_is_refused_naming_it_and_never_replaced(workspace_cfg: Path, name: str, damage: str) -> None:
    path = workspace_cfg.parent / "state" / name
    path.write_bytes(KEY_DAMAGE[damage])
    for command in ("preview", "init"):
        result = cli("--config", str(workspace_cfg), command)
        assert result.exit_code == EXIT_CONFIG and f"{path} holds {len(KEY_DAMAGE[damage])} bytes" in result.output
    assert path.read_bytes() == KEY_DAMAGE[damage]


def test_key_readable_by_others_is_refused_with_the_chmod_to_run(workspace_cfg: Path) -> None:
    path = workspace_cfg.parent / "state" / "signing.key"
    path.chmod(0o644)
    result = cli("--config", str(workspace_cfg), "preview")
    assert result.exit_code == EXIT_CONFIG and "is not private" in result.output
    assert f"chmod 600 {path}" in result.output


def test_key_file_replaced_by_a_directory_is_an_identity_error(workspace_cfg: Path) -> None:
    path = workspace_cfg.parent / "state" / "digest.key"
    path.unlink()
    path.mkdir(mode=0o700)
    result = cli("--config", str(workspace_cfg), "preview")
    assert result.exit_code == EXIT_CONFIG and f"cannot read {path}" in result.output


def test_lost_identity_of_an_instance_in_use_is_not_regenerated_by_init(workspace_cfg: Path) -> None:
    state_dir = workspace_cfg.parent / "state"
    (state_dir / "seq").write_text("41\n")
    (state_dir / "identity.json").unlink()
    for command in ("init", "preview"):
        result = cli("--config", str(workspace_cfg), command)
        assert result.exit_code == EXIT_CONFIG and "already sent messages" in result.output, command
        assert "restore identity.json from a backup" in result.output
    assert not (state_dir / "identity.json").exists()


def test_init_interrupted_before_the_instance_id_is_completed(workspace_cfg: Path) -> None:
    state_dir = workspace_cfg.parent / "state"
    key = (state_dir / "signing.key").read_bytes()
    (state_dir / "identity.json").unlink()  # never used: no seq, no ledger
    result = cli("--config", str(workspace_cfg), "init")
    assert result.exit_code == 0 and "created identity.json" in result.output
    assert (state_dir / "signing.key").read_bytes() == key


# ---- message state: recovered and logged, or refused with a remedy ----


@pytest.fixture
def delivered_once(tmp_path: Path, sample_db: Path, server: ReferenceServer) -> tuple[Path, Any]:
    """A state dir whose engine delivered license, heartbeat and digest (seq 1-3)."""
    cfg = engine_config(tmp_path / "state", sample_db, server)
    engine = make_engine(cfg, Events(), Clock())
    result = engine.cycle(engine.deps.clock(), ["license", "heartbeat", "digest"])
    assert len(result.delivered) == 3
    return cfg.instance.state_dir, cfg


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"-7\n", b"\xff\xfe", b"9" * 40, b"12 13\n"])
def test_damaged_seq_resumes_past_every_seq_on_record_and_says_so(
    delivered_once: tuple[Path, Any], content: bytes
) -> None:
    state_dir, cfg = delivered_once
    (state_dir / "seq").write_bytes(content)
    events = Events()
    engine = make_engine(cfg, events, Clock())
    sealed = engine.produce(["license"], engine.deps.clock())
    assert sealed[0].obj["seq"] > 3
    assert events.named("seq.recovered")
    assert [e.seq for e, _ in engine.flush().delivered] == [sealed[0].obj["seq"]]


@pytest.mark.parametrize("content", [b"", b"{", b"[]", DEEP_JSON, b'{"license": {"next_due": "soon"}}',
                                     b'{"heartbeat": {"consecutive_failures": -1}}', b"\x00" * 64])
def test_damaged_schedule_restarts_fresh_and_is_logged(delivered_once: tuple[Path, Any], content: bytes) -> None:
    state_dir, cfg = delivered_once
    (state_dir / "schedule.json").write_bytes(content)
    events = Events()
    engine = make_engine(cfg, events, Clock())
    assert "started a fresh schedule" in events.named("agent.state_opened")[0]["schedule_reset"]
    assert engine.due(engine.deps.clock()) == ["license", "heartbeat", "digest"]
    assert len(engine.cycle(engine.deps.clock(), engine.due(engine.deps.clock())).delivered) == 3


def spool_damage(entry: Path) -> dict[str, bytes]:
    data = entry.read_bytes()
    doc = json.loads(data)
    env = json.loads(doc["envelope"])
    import base64
    import hashlib

    payload = json.dumps({"seq": doc["seq"] + 1}).encode()  # a hash-consistent entry of another seq
    env["payload"] = base64.b64encode(payload).decode()
    forged = dict(doc, envelope=json.dumps(env), payload_sha256=hashlib.sha256(payload).hexdigest())
    return {
        "truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00\xff" * 50, "deeply_nested": DEEP_JSON,
        "bit_flip": data.replace(b'"kind"', b'"kinc"', 1), "payload_of_another_seq": json.dumps(forged).encode(),
    }


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "deeply_nested", "bit_flip",
                                    "payload_of_another_seq"])
def test_damaged_spool_entry_is_quarantined_and_counted_while_the_others_are_delivered(
    tmp_path: Path, sample_db: Path, server: ReferenceServer, damage: str
) -> None:
    cfg = engine_config(tmp_path / "state", sample_db, server)
    engine = make_engine(cfg, Events(), Clock())
    engine.produce(["license", "heartbeat", "digest"], engine.deps.clock())
    new = sorted((cfg.instance.state_dir / "spool" / "new").iterdir())
    victim = new[1]
    victim.write_bytes(spool_damage(victim)[damage])
    events = Events()
    engine = make_engine(cfg, events, Clock())
    assert events.named("agent.state_opened")[0]["quarantined"] == 1
    assert engine.spool.counters()["corrupt"] == 1
    assert (cfg.instance.state_dir / "spool" / "bad" / victim.name).exists()
    assert [e.seq for e, _ in engine.flush().delivered] == [1, 3]
    assert engine.produce(["heartbeat"], engine.deps.clock())[0].obj["seq"] == 4  # seq 2 never reused


def test_torn_last_ledger_line_is_repaired_and_the_chain_stays_valid(delivered_once: tuple[Path, Any]) -> None:
    state_dir, cfg = delivered_once
    seg = next((state_dir / "ledger").glob("*.jsonl"))
    seg.write_bytes(seg.read_bytes() + b'{"n":4,"prev":"ab')  # kill -9 inside write()
    events = Events()
    engine = make_engine(cfg, events, Clock())
    assert events.named("agent.state_opened")[0]["torn_ledger_bytes"] == 17
    engine.cycle(engine.deps.clock(), ["license"])
    assert engine.ledger.verify().ok and ledger_events(state_dir) == ["sent"] * 4
    assert cli("--config", str(write_cfg(cfg)), "log", "--verify").exit_code == 0


def write_cfg(cfg: Any) -> Path:
    path = cfg.instance.state_dir.parent / "fluxagent.toml"
    path.write_text(tomli_w.dumps(config.to_mapping(cfg)), encoding="utf-8")
    return path


@pytest.mark.parametrize("damage", ["garbage_line", "deeply_nested_line", "altered_entry"])
def test_damaged_ledger_is_reported_by_log_verify_and_appends_are_refused_with_a_remedy(
    delivered_once: tuple[Path, Any], damage: str
) -> None:
    state_dir, cfg = delivered_once
    seg = next((state_dir / "ledger").glob("*.jsonl"))
    lines = seg.read_bytes().splitlines(keepends=True)
    if damage == "garbage_line":
        lines[-1] = b"\x00\xff garbage\n"
    elif damage == "deeply_nested_line":
        lines[-1] = DEEP_JSON + b"\n"
    else:
        lines[1] = lines[1].replace(b'"outcome":"delivered"', b'"outcome":"dropped"')
    seg.write_bytes(b"".join(lines))
    result = cli("--config", str(write_cfg(cfg)), "log", "--verify")
    assert result.exit_code == 1 and "ledger BROKEN" in result.output and seg.name in result.output
    for command in ("status", "log"):  # reading a damaged ledger: an answer or a clear error, never a traceback
        assert cli("--config", str(write_cfg(cfg)), command).exit_code in (0, 1, EXIT_CONFIG)
    engine = make_engine(cfg, Events(), Clock())
    engine.produce(["license"], engine.deps.clock())
    if damage == "altered_entry":
        assert engine.flush().delivered  # the head is intact: the chain goes on, verify still flags entry 2
        return
    with pytest.raises(StateError) as info:
        engine.flush()
    assert "cannot append to the ledger" in info.value.message and "log --verify" in (info.value.hint or "")
    assert engine.spool.depth() == 1  # delivered but unrecorded: kept, resent once the ledger is fixed


@pytest.mark.parametrize("content", [b"", b"{", DEEP_JSON, b"[]", b"\xff"])
def test_damaged_license_status_counts_as_absent_for_status_and_is_rewritten_by_the_next_receipt(
    delivered_once: tuple[Path, Any], content: bytes
) -> None:
    state_dir, cfg = delivered_once
    path = state_dir / LICENSE_STATUS_FILE
    path.write_bytes(content)
    result = cli("--config", str(write_cfg(cfg)), "status")
    # the state is derived again from what is recorded: a damaged record counts as absent
    assert result.exit_code == 0 or (result.exit_code == EXIT_CONFIG and str(path) in result.output)
    engine = make_engine(cfg, Events(), Clock())
    assert license_store.parse(engine.read_license_status()).receipt is None
    engine.cycle(engine.deps.clock() + 7 * 3600, ["license"])
    assert license_store.parse(state.read_json(path)).receipt is not None
    assert cli("--config", str(write_cfg(cfg)), "status").exit_code == 0


# ---- hostile platform rows ----

HOSTILE_TEXT = [
    "x" * 5_000_000,  # huge
    "host\x00.example.com",  # NUL byte
    "'; DROP TABLE servers; --",
    "robert'); DELETE FROM clients WHERE ('1'='1",
    "\u202eevil.example",
    "../../etc/passwd",
    "10.0.0.1/99",
    "::ffff:999.1.1.1",
]
INVALID_UTF8 = bytes.fromhex("41ff42c3")  # stored as TEXT via CAST


@pytest.fixture
def hostile_db(tmp_path: Path) -> Path:
    """A reference-schema database whose inventory rows hold hostile values, plus a `tricks` table."""
    path = tmp_path / "hostile.db"
    conn = sqlite3.connect(path)
    conn.executescript(sample.ddl("sqlite"))
    conn.execute("INSERT INTO settings VALUES ('version', '4.12.3')")
    conn.execute("INSERT INTO clients VALUES (1, 'Ann Example', 'ann@example.com', NULL, NULL, 'active')")
    conn.execute("INSERT INTO servers VALUES (1, 'good.example.com', '192.0.2.1', NULL, NULL)")
    for i, text in enumerate(HOSTILE_TEXT, start=2):
        conn.execute("INSERT INTO servers VALUES (?, ?, ?, NULL, NULL)", (i, text, text))
        conn.execute("INSERT INTO network_ranges VALUES (?, ?, NULL, NULL)", (i, text))
    conn.execute("INSERT INTO servers VALUES (90, CAST(? AS TEXT), NULL, NULL, NULL)", (INVALID_UTF8,))
    conn.execute("INSERT INTO servers VALUES (91, NULL, CAST(? AS TEXT), NULL, NULL)", (INVALID_UTF8,))
    conn.execute("INSERT INTO servers VALUES (92, ?, 12345, NULL, NULL)", (b"blob-host",))
    conn.execute("INSERT INTO servers VALUES (93, NULL, NULL, NULL, NULL)")
    conn.execute("INSERT INTO network_ranges VALUES (90, CAST(? AS TEXT), NULL, NULL)", (INVALID_UTF8,))
    conn.execute("INSERT INTO network_ranges VALUES (91, 42, NULL, NULL)")
    conn.execute("INSERT INTO network_ranges VALUES (92, '198.51.100.0/24', NULL, NULL)")
    conn.execute("CREATE TABLE tricks (name TEXT, value)")
    conn.executemany("INSERT INTO tricks VALUES (?, ?)", [
        ("negative", -5), ("huge", 2**63 - 1), ("real", 3.5), ("null", None), ("text", "12"),
        ("blob", b"\x00\x01"), ("bad_utf8", None), ("big_text", "9" * 100),
    ])
    conn.execute("UPDATE tricks SET value = CAST(? AS TEXT) WHERE name = 'bad_utf8'", (INVALID_UTF8,))
    conn.commit()
    conn.close()
    return path


def gather(tmp_path: Path, db: Path, kinds: list[str], **queries: str) -> list[collect.Built]:
    doc = base_config(tmp_path / "state", db, platform={"queries": queries} if queries else {})
    cfg = config.from_mapping(doc)
    ident, _ = identity.ensure(cfg.instance.state_dir, now=0)
    return collect.gather(cfg, ident, kinds, now=1_700_000_000, world=fixed_world())


def test_hostile_inventory_values_are_skipped_and_counted_and_never_reach_the_payload(
    tmp_path: Path, hostile_db: Path
) -> None:
    before = hostile_db.read_bytes()
    (digest,) = gather(tmp_path, hostile_db, ["digest"])
    assert digest.error is None and digest.message is not None
    body = digest.message.body
    # good.example.com, 198.51.100.0/24, plus this host's machine id and two networks
    assert len(body["servers"]) == 2 and len(body["networks"]) == 3
    assert digest.skipped["server_hostname_invalid"] >= len(HOSTILE_TEXT)
    assert digest.skipped["network_invalid"] == len(HOSTILE_TEXT) + 2
    assert sum(digest.skipped.values()) >= 2 * len(HOSTILE_TEXT) + 5
    wire = json.dumps(body, default=lambda v: v.hex())  # packed token lists as their hex tokens
    for needle in ("DROP", "DELETE", "passwd", "evil", "xxxxxxxx", "\\u0000", "blob"):
        assert needle not in wire
    assert hostile_db.read_bytes() == before


@pytest.mark.parametrize(("trick", "why"), [
    ("negative", "must not be negative"), ("huge", "not a plausible count"), ("real", "float"), ("null", "NoneType"),
    ("text", "str"), ("blob", "bytes"), ("bad_utf8", "bytes"), ("big_text", "str"),
])
def test_hostile_count_values_fail_the_heartbeat_with_a_clear_source_error(
    tmp_path: Path, hostile_db: Path, trick: str, why: str
) -> None:
    (hb,) = gather(tmp_path, hostile_db, ["heartbeat"],
                   active_clients=f"SELECT value FROM tricks WHERE name = '{trick}'")
    assert hb.message is None and hb.error is not None
    assert "active_clients" in hb.error.message and why in hb.error.message
    assert len(hb.error.message) < 400


def test_count_query_that_writes_is_refused_and_the_database_is_unchanged(tmp_path: Path, hostile_db: Path) -> None:
    before = hostile_db.read_bytes()
    (hb,) = gather(tmp_path, hostile_db, ["heartbeat"], active_clients="DELETE FROM clients RETURNING 1")
    assert hb.message is None and hb.error is not None and "platform.queries.active_clients" in hb.error.message
    assert hostile_db.read_bytes() == before


def test_invalid_utf8_version_is_a_source_error_that_does_not_quote_the_bytes(
    tmp_path: Path, hostile_db: Path
) -> None:
    (hb,) = gather(tmp_path, hostile_db, ["heartbeat"],
                   version="SELECT value FROM tricks WHERE name = 'bad_utf8'")
    assert hb.message is None and hb.error is not None
    assert "platform.queries.version" in hb.error.message and "A\ufffdB" not in hb.error.message


def test_identifier_query_returning_hostile_columns_is_a_source_error_naming_the_query(
    tmp_path: Path, hostile_db: Path
) -> None:
    (digest,) = gather(tmp_path, hostile_db, ["digest"], networks="SELECT cidr, description FROM network_ranges")
    assert digest.message is None and digest.error is not None
    assert "platform.queries.networks must return 1 column(s), got 2" in digest.error.message


def test_platform_database_that_is_not_a_database_is_a_source_error(tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(os.urandom(4096))
    built = gather(tmp_path, db, ["heartbeat", "digest"])
    assert all(b.message is None and b.error is not None and "platform" in b.error.message for b in built)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(
    st.one_of(st.none(), st.text(max_size=30), st.binary(max_size=10), st.integers(-(2**63), 2**63 - 1),
              st.floats()),
    st.one_of(st.none(), st.text(max_size=30), st.binary(max_size=10), st.integers(-(2**63), 2**63 - 1)),
), max_size=12))
def test_any_inventory_rows_tokenize_or_count_as_skipped_never_crash(tmp_path: Path, rows: list[Any]) -> None:
    db = tmp_path / "fuzz.db"
    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous = OFF")
    conn.executescript(sample.ddl("sqlite"))
    conn.executemany("INSERT INTO servers (hostname, ip_address) VALUES (?, ?)", rows)
    conn.executemany("INSERT INTO network_ranges (cidr) VALUES (?)", [(r[1] if r[1] is not None else "x",)
                                                                      for r in rows])
    conn.commit()
    conn.close()
    (digest,) = gather(tmp_path, db, ["digest"])
    assert digest.message is not None, digest.error
    body = digest.message.body
    assert len(body["servers"]) - 1 + digest.skipped["server_without_identifier"] <= len(rows) + 0
    hexes = body["servers"].hex() + body["networks"].hex()
    assert all(len(t) == 32 and set(t) <= set("0123456789abcdef") for t in hexes)


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression fails, it does not swap


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "big"])
def test_endless_or_huge_config_file_is_refused_after_a_bounded_read(tmp_path: Path, source: str) -> None:
    import subprocess
    import sys

    path = Path(source)
    if source == "big":
        path = tmp_path / "big.toml"
        path.write_text("# padding\n" * 200_000 + '[instance]\nbound_domain = "a.example"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "fluxagent", "--config", str(path), "status"], capture_output=True,
                          text=True, timeout=60, preexec_fn=_limit_memory, check=False)
    assert done.returncode == EXIT_CONFIG and f"{path}: larger than" in done.stderr


def test_huge_bad_value_is_quoted_only_in_part(tmp_path: Path) -> None:
    path = tmp_path / "fluxagent.toml"
    path.write_text(f'[instance]\nbound_domain = "a.example"\n[server]\nurl = "{"x" * 500_000}"\n', encoding="utf-8")
    result = cli("--config", str(path), "status")
    assert result.exit_code == EXIT_CONFIG and "server.url:" in result.output and len(result.output) < 2000


@pytest.mark.parametrize("version", ["9" * 5_000_000, "4.12.3\x00evil", "4.12.3'; DROP TABLE settings; --",
                                     "\u202e3.21.4", "4.12.3\n4.12.4", ""])
def test_hostile_platform_version_is_not_sent_and_the_error_is_short(tmp_path: Path, version: str) -> None:
    db = tmp_path / "v.db"
    conn = sqlite3.connect(db)
    conn.executescript(sample.ddl("sqlite"))
    conn.execute("INSERT INTO settings VALUES ('version', ?)", (version,))
    conn.commit()
    conn.close()
    (hb,) = gather(tmp_path, db, ["heartbeat"])
    assert hb.message is None and hb.error is not None
    assert "version" in hb.error.message and len(hb.error.message) < 300 and "\x00" not in hb.error.message


# ---- any damage to any state file: a FluxError at worst, and the identity is never regenerated ----


@pytest.fixture(scope="module")
def used_template(tmp_path_factory: pytest.TempPathFactory, sample_db: Path) -> Path:
    """A state dir that delivered every kind once and holds one spooled heartbeat (copied per example)."""
    state_dir = tmp_path_factory.mktemp("template") / "state"
    with ReferenceServer() as srv:
        cfg = engine_config(state_dir, sample_db, srv)
        engine = make_engine(cfg, Events(), Clock())
        engine.cycle(engine.deps.clock(), ["license", "heartbeat", "digest"])
        srv.inject(Fault.status(503))
        engine.produce(["heartbeat"], engine.deps.clock())
        engine.flush()
    return state_dir


_MUTATIONS = st.sampled_from(["truncate", "flip", "random", "empty", "append"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), mutation=_MUTATIONS)
def test_any_damage_to_any_state_file_is_recovered_or_refused_and_never_regenerates_the_identity(
    tmp_path_factory: pytest.TempPathFactory, used_template: Path, sample_db: Path, data: st.DataObject,
    mutation: str, reference_server,
) -> None:
    state_dir = tmp_path_factory.mktemp("damaged") / "state"
    shutil.copytree(used_template, state_dir)
    files = sorted(p for p in state_dir.rglob("*") if p.is_file() and p.name != "lock")
    victim = data.draw(st.sampled_from(files), label="file")
    raw = victim.read_bytes()
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="at")
    if mutation == "truncate":
        raw = raw[:at]
    elif mutation == "flip" and raw:
        raw = raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[at + 1:]
    elif mutation == "random":
        raw = data.draw(st.binary(min_size=1, max_size=200), label="bytes")
    elif mutation == "empty":
        raw = b""
    else:
        raw += data.draw(st.binary(min_size=1, max_size=50), label="tail")
    victim.write_bytes(raw)
    identity_files = {n: (state_dir / n).read_bytes() for n in ("identity.json", "signing.key", "digest.key")}
    srv = reference_server()
    cfg = engine_config(state_dir, sample_db, srv)
    try:
        ident = identity.load(state_dir)
        engine = Engine(cfg, ident, Deps(HttpxTransport(cfg.server, env={}), Clock(), world=fixed_world(),
                                         log=Events(), approval=running_approved))
        engine.cycle(engine.deps.clock(), ["license", "heartbeat", "digest"])
    except FluxError as exc:
        assert exc.exit_code in (1, EXIT_CONFIG) and str(state_dir) in str(exc)

    assert {n: (state_dir / n).read_bytes() for n in identity_files} == identity_files



@pytest.mark.parametrize(("sql", "why"), [
    ("SELECT 9007199254740993", ("not a plausible count",)),  # 2^53 + 1: no longer exact in JSON readers
    # an integral numeric/decimal on PostgreSQL and MariaDB, a float on SQLite
    ("SELECT 99999999999999999999999", ("not a plausible count", "not an integer")),
    ("SELECT -5", ("must not be negative",)),
    ("SELECT 'twelve'", ("not an integer",)),
])
def test_hostile_count_values_fail_on_every_database_engine(
    platform_small: str, sql: str, why: tuple[str, ...]
) -> None:
    from fluxagent.config import PlatformConfig, Queries
    from fluxagent.errors import SourceShapeError
    from fluxagent.sources.platform import open_platform

    src = open_platform(PlatformConfig(database=platform_small, queries=Queries(total_users=sql), statement_timeout=5))
    try:
        with pytest.raises(SourceShapeError) as info:
            src.counts()
    finally:
        src.close()
    assert "platform.queries.total_users" in info.value.message and any(w in info.value.message for w in why)
