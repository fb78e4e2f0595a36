"""Disk faults under a real state directory: a full filesystem (ENOSPC) and a read-only one (EROFS).

The state directory lives on a small tmpfs mounted for the test (root only; skipped with the
reason elsewhere). Each fault must give a clear error, leave the old state intact, and the
agent must recover by itself once the disk is usable again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from conftest import run_cli
from hostile import engine_config, ledger_events, make_engine
from support.capture import Events
from support.clock import Clock

from fluxagent import config
from fluxagent.daemon.agent import STATE_ERROR_PAUSE, Agent
from fluxagent.errors import EXIT_CONFIG, EXIT_IOERR, StateError
from fluxagent.schema.approval import running_approved
from fluxagent.testing.server import Fault, ReferenceServer
from fluxagent.testing.workspace import approve_running
from fluxagent.transport import HttpxTransport

DAY = 86400


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at tmp_path/fs for this test."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    done = _mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()} (CI runs as root with mount allowed)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def fill(mnt: Path) -> Path:
    """Fill the filesystem at mnt completely; return the filler file."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        (mnt / "probe").write_bytes(b"x" * 4096)
    assert not (mnt / "probe").exists() or (mnt / "probe").stat().st_size < 4096
    return filler


def snapshot(root: Path) -> dict[str, bytes]:
    """Return every file under root with its content (the whole state directory, byte for byte)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def server(reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server()
    yield srv


def test_full_disk_refuses_to_seal_keeps_the_old_state_and_catches_up_when_space_returns(
    small_fs: Path, sample_db: Path, server: ReferenceServer
) -> None:
    cfg = engine_config(small_fs / "state", sample_db, server)
    clock, events = Clock(), Events()
    clock.now -= 2 * DAY  # so that two days later everything is due and not in the server's future
    engine = make_engine(cfg, events, clock)
    assert len(engine.cycle(clock(), engine.due(clock())).delivered) == 3
    before = snapshot(cfg.instance.state_dir)
    filler = fill(small_fs)
    clock.now += 2 * DAY
    with pytest.raises(StateError) as info:
        engine.produce(engine.due(clock()), clock())
    assert "No space left on device" in info.value.message and str(cfg.instance.state_dir) in info.value.message
    assert "free space" in (info.value.hint or "")
    assert snapshot(cfg.instance.state_dir) == before  # no partial file, no temp file, nothing changed
    assert engine.due(clock()) == ["license", "heartbeat", "digest"]  # not skipped for a whole interval
    filler.unlink()
    result = engine.cycle(clock(), engine.due(clock()))
    assert [e.seq for e, _ in result.delivered] == [4, 5, 6]
    assert engine.ledger.verify().ok and ledger_events(cfg.instance.state_dir) == ["sent"] * 6


def test_full_disk_when_recording_a_delivery_keeps_the_message_and_records_it_after_space_returns(
    small_fs: Path, sample_db: Path, server: ReferenceServer
) -> None:
    cfg = engine_config(small_fs / "state", sample_db, server)
    clock = Clock()
    engine = make_engine(cfg, Events(), clock)
    engine.cycle(clock(), ["license"])
    server.inject(Fault.status(503))
    engine.produce(["digest"], clock())
    assert engine.flush().retry is not None
    ledger_before = snapshot(cfg.instance.state_dir / "ledger")
    # ledger lines are short; a line that starts a new segment needs a block of its own
    engine.ledger.max_segment_bytes = 1
    filler = fill(small_fs)
    clock.now += 60
    with pytest.raises(StateError) as info:
        engine.flush()
    message = info.value.message
    assert "cannot append to the ledger" in message and ("No space left" in message or "disk full" in message)
    assert snapshot(cfg.instance.state_dir / "ledger") == ledger_before  # no torn line
    assert [e.kind for e in engine.spool.entries()] == ["digest"]
    filler.unlink()
    assert [e.kind for e, _ in engine.flush().delivered] == ["digest"]  # the same seq, sent again
    # the 503 attempt left the machine too, and is on record as an attempt
    assert engine.ledger.verify().ok and ledger_events(cfg.instance.state_dir) == ["sent", "attempt", "sent"]
    digests = [r for r in server.received if r.endpoint == "/v1/digest"]
    assert len({r.payload["seq"] for r in digests if r.payload}) == 1


def test_daemon_step_survives_a_full_disk_pauses_and_then_delivers(
    small_fs: Path, sample_db: Path, server: ReferenceServer
) -> None:
    cfg = engine_config(small_fs / "state", sample_db, server)
    clock = Clock()
    make_engine(cfg, Events(), clock)  # creates the identity
    with Agent(cfg, transport_factory=lambda c: HttpxTransport(c.server, env={}), clock=clock,
               approval=running_approved) as agent:
        filler = fill(small_fs)
        assert agent.step() == STATE_ERROR_PAUSE
        filler.unlink()
        clock.now += STATE_ERROR_PAUSE
        agent.step()
        assert agent.engine.spool.depth() == 0
        assert ledger_events(cfg.instance.state_dir) == ["sent"] * 3


def _write_config(cfg: config.Config, where: Path) -> Path:
    path = where / "fluxagent.toml"
    path.write_text(tomli_w.dumps(config.to_mapping(cfg)), encoding="utf-8")
    approve_running(path)
    return path


def test_read_only_state_dir_gives_exit_74_with_the_reason_then_recovers_when_writable(
    small_fs: Path, tmp_path: Path, sample_db: Path, server: ReferenceServer
) -> None:
    cfg = engine_config(small_fs / "state", sample_db, server)
    clock = Clock()
    make_engine(cfg, Events(), clock).cycle(clock(), ["license", "heartbeat", "digest"])
    path = _write_config(cfg, tmp_path)
    before = snapshot(cfg.instance.state_dir)
    remount = _mount("-o", "remount,ro", str(small_fs))
    assert remount.returncode == 0, remount.stderr
    env = {"NO_PROXY": "127.0.0.1", "FLUXAGENT_CONFIG": str(path)}
    done = run_cli("run", "--once", env=env)
    assert done.returncode == EXIT_IOERR, done.stderr  # a disk error: systemd restarts, unlike 78
    assert "Read-only file system" in done.stderr and "Traceback" not in done.stderr
    assert str(cfg.instance.state_dir) in done.stderr
    assert snapshot(cfg.instance.state_dir) == before
    for command in ("status", "log"):  # reading needs no writes
        assert run_cli(command, env=env).returncode == 0
    assert _mount("-o", "remount,rw", str(small_fs)).returncode == 0
    done = run_cli("run", "--once", env=env)
    assert done.returncode == 0, done.stderr


# ---- unreadable state files: root without the capabilities that bypass file permissions ----

SETPRIV = shutil.which("setpriv")
NO_DAC = ["--bounding-set", "-dac_override,-dac_read_search"]


def run_without_dac(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `fluxagent --config PATH ARGS` as root stripped of CAP_DAC_OVERRIDE/READ_SEARCH, so modes bite."""
    assert SETPRIV is not None
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "127.0.0.1"}
    return subprocess.run([SETPRIV, *NO_DAC, sys.executable, "-m", "fluxagent", "--config", str(config_path), *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def used_state(tmp_path: Path, sample_db: Path, server: ReferenceServer) -> tuple[Path, Path]:
    """A state dir that delivered everything once and holds one spooled heartbeat; returns (config, state)."""
    if os.geteuid() != 0 or SETPRIV is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE (CI runs the suite as root)")
    probe = subprocess.run([SETPRIV, *NO_DAC, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode().strip()}")
    cfg = engine_config(tmp_path / "state", sample_db, server)
    clock = Clock()
    engine = make_engine(cfg, Events(), clock)
    engine.cycle(clock(), ["license", "heartbeat", "digest"])
    server.inject(Fault.status(503))
    engine.produce(["heartbeat"], clock())
    assert engine.flush().retry is not None
    return _write_config(cfg, tmp_path), cfg.instance.state_dir


UNREADABLE = {  # file → the exit code and what the message must say (78: refused; 0: recovered)
    "identity.json": (EXIT_CONFIG, "identity.json is damaged or unreadable"),
    "signing.key": (EXIT_CONFIG, "signing.key: Permission denied"),
    "seq": (EXIT_CONFIG, "seq: Permission denied"),
    "schedule.json": (EXIT_CONFIG, "schedule.json: Permission denied"),
    "ledger/000000000001.jsonl": (EXIT_CONFIG, "cannot open the ledger"),
    "license-status.json": (0, ""),  # rewritten from the next receipt
    # the agent owns its directories and puts their mode back to 0700 itself
    "spool/new": (0, ""),
    ".": (0, ""),  # the whole state dir made read-only (0500)
}


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_state_file_without_permission_is_refused_with_its_name_or_recovered_and_never_regenerated(
    used_state: tuple[Path, Path], name: str
) -> None:
    config_path, state_dir = used_state
    target = state_dir / name
    mode = target.stat().st_mode & 0o777
    keep = {n: (state_dir / n).read_bytes() for n in ("identity.json", "signing.key", "digest.key")}
    target.chmod(0o500 if name == "." else 0o000)
    try:
        done = run_without_dac(config_path, "run", "--once")
        mode_after = target.stat().st_mode & 0o777
    finally:
        target.chmod(mode)
    code, says = UNREADABLE[name]
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and says in done.stderr
    assert {n: (state_dir / n).read_bytes() for n in keep} == keep
    if code == 0:
        assert target.is_file() or mode_after == 0o700
    else:
        again = run_without_dac(config_path, "run", "--once")
        assert again.returncode == 0, again.stderr  # permissions fixed: everything goes out
    assert not list((state_dir / "spool" / "new").iterdir())


def test_unreadable_spool_entry_is_quarantined_and_counted_not_lost(used_state: tuple[Path, Path]) -> None:
    config_path, state_dir = used_state
    (entry,) = (state_dir / "spool" / "new").iterdir()
    entry.chmod(0o000)
    done = run_without_dac(config_path, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert (state_dir / "spool" / "bad" / entry.name).exists()  # kept for the operator, not deleted
    status = run_without_dac(config_path, "status", "--json")
    assert status.returncode == 0 and '"corrupt": 1' in status.stdout


# ---- without mount rights: a file size limit makes big writes fail the same way (EFBIG) ----


def _small_files_only() -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_write_failures_from_a_file_size_limit_exit_74_keep_what_was_queued_and_recover_without_it(
    tmp_path: Path, sample_db: Path, server: ReferenceServer
) -> None:
    cfg = engine_config(tmp_path / "state", sample_db, server)
    make_engine(cfg, Events(), Clock())  # the identity
    config_path = _write_config(cfg, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "127.0.0.1"}
    argv = [sys.executable, "-m", "fluxagent", "--config", str(config_path), "run", "--once"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False,
                          preexec_fn=_small_files_only)
    assert done.returncode == EXIT_IOERR, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert "the message was not queued" in done.stderr  # the digest entry is over the limit
    queued = sorted(p.name.split("-")[1] for p in (cfg.instance.state_dir / "spool" / "new").iterdir())
    assert queued == ["heartbeat.json", "license.json"]  # what fitted stays queued, whole
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    # the approval beside the config (first read by this run), the queued license (it registers the
    # instance) and heartbeat, then a new heartbeat and the digest
    assert ledger_events(cfg.instance.state_dir) == ["schema_approved"] + ["sent"] * 4


# ---- exit codes: a disk error is 74 (systemd restarts it), a permission problem 78 (a person fixes it) ----


@pytest.mark.parametrize(("err", "code"), [
    (errno.ENOSPC, EXIT_IOERR), (errno.EIO, EXIT_IOERR), (errno.EROFS, EXIT_IOERR), (errno.EFBIG, EXIT_IOERR),
    (errno.EDQUOT, EXIT_IOERR), (errno.EACCES, EXIT_CONFIG), (errno.EPERM, EXIT_CONFIG), (errno.ELOOP, EXIT_CONFIG),
])
def test_state_error_from_a_disk_error_exits_74_and_from_a_permission_error_78(err: int, code: int) -> None:
    def write() -> None:
        try:
            raise OSError(err, os.strerror(err), "/var/lib/fluxagent/schedule.json")
        except OSError as exc:
            raise StateError(f"cannot write schedule.json: {exc.strerror}") from exc

    with pytest.raises(StateError) as info:
        write()
    assert info.value.exit_code == code
    assert StateError("schedule.json is not valid JSON").exit_code == EXIT_CONFIG  # corrupt: a person fixes it


def test_a_unit_restart_policy_restarts_after_74_and_only_78_prevents_it() -> None:
    unit = (Path(__file__).parent.parent / "packaging" / "systemd" / "fluxagent.service").read_text()
    lines = [ln.strip() for ln in unit.splitlines()]
    assert "RestartPreventExitStatus=78" in lines and "Restart=on-failure" in lines
    assert not any(ln.startswith("RestartPreventExitStatus=") and "74" in ln for ln in lines)
