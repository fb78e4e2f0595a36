"""Update credentials against the reference server on loopback: helpers over their real protocols."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agentkit import Daemon, clean_env
from support.clock import Clock

from fluxagent import config
from fluxagent.daemon.agent import Agent
from fluxagent.delivery import Deps, Engine
from fluxagent.errors import ConfigError
from fluxagent.statedir import identity
from fluxagent.statedir.ledger import Ledger
from fluxagent.statedir.lock import instance_lock
from fluxagent.testing.server import ReferenceServer
from fluxagent.testing.workspace import Workspace, make_workspace
from fluxagent.transport import HttpxTransport
from fluxagent.updates.credentials import Credential, CredentialCache, CredentialsError, fetch
from fluxagent.updates.helpers import APT_STATE_FILE, cleanup_apt, git_get, matches, parse_git_request, write_apt
from tests.conftest import run_cli

BIN = Path(sys.executable).parent
REGISTRY = "registry.fluxbilling.example"


@pytest.fixture
def server(reference_server) -> Iterator[ReferenceServer]:
    srv = reference_server(credentials_ttl=600)
    yield srv


@pytest.fixture
def ws(tmp_path: Path, server: ReferenceServer) -> Workspace:
    """A workspace whose instance is registered with the server (one `run --once`)."""
    w = make_workspace(tmp_path / "ws", server_url=server.url, vendor_keys=server.signing_keys)
    register(w)
    return w


def register(w: Workspace) -> None:
    """Register the workspace's instance with its server: one `run --once` cycle, in process."""
    with instance_lock(w.cfg.instance.state_dir), Agent(w.cfg) as agent:
        assert agent.once() == 0


def helper(ws: Workspace, argv: list[str], stdin: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a console script of this install with the workspace config."""
    full = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    full.update(FLUXAGENT_CONFIG=str(ws.root / "fluxagent.toml"), **env)
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], input=stdin, capture_output=True, text=True,
                          env=full, timeout=60, check=False)


def test_docker_helper_get_prints_fresh_credentials_for_the_registry(ws: Workspace, server: ReferenceServer) -> None:
    done = helper(ws, ["docker-credential-fluxagent", "get"], f"https://{REGISTRY}\n")
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == {"ServerURL", "Username", "Secret"}
    assert answer["ServerURL"] == f"https://{REGISTRY}"
    assert server.credentials_valid(answer["Username"], answer["Secret"])


def test_docker_helper_answers_not_found_for_another_registry(ws: Workspace) -> None:
    done = helper(ws, ["docker-credential-fluxagent", "get"], "https://index.docker.io/v1/\n")
    assert done.returncode == 1
    assert done.stdout.strip() == "credentials not found in native keychain"


def test_docker_helper_list_store_and_erase_store_nothing(ws: Workspace, server: ReferenceServer) -> None:
    listed = helper(ws, ["docker-credential-fluxagent", "list"], "")
    assert (listed.returncode, json.loads(listed.stdout)) == (0, {})
    stored = helper(ws, ["docker-credential-fluxagent", "store"],
                    json.dumps({"ServerURL": REGISTRY, "Username": "u", "Secret": "s"}))
    assert stored.returncode == 1 and "stores none" in stored.stdout
    assert helper(ws, ["docker-credential-fluxagent", "erase"], REGISTRY).returncode == 0
    assert server.issued_credentials == []


def test_git_helper_get_answers_username_password_and_expiry(ws: Workspace, server: ReferenceServer) -> None:
    before = int(time.time())
    done = helper(ws, ["fluxagent", "credentials", "git", "get"], f"protocol=https\nhost={REGISTRY}\n\n")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert set(lines) == {"username", "password", "password_expiry_utc"}
    assert server.credentials_valid(lines["username"], lines["password"])
    assert before + 600 - 5 <= int(lines["password_expiry_utc"]) <= int(time.time()) + 600


def test_git_helper_is_silent_for_another_host_and_store_erase_are_no_ops(ws: Workspace) -> None:
    other = helper(ws, ["fluxagent", "credentials", "git", "get"], "protocol=https\nhost=github.com\n\n")
    assert (other.returncode, other.stdout) == (0, "")
    for action in ("store", "erase"):
        done = helper(ws, ["fluxagent", "credentials", "git", action],
                      f"protocol=https\nhost={REGISTRY}\nusername=u\npassword=p\n\n")
        assert (done.returncode, done.stdout) == (0, "")


def test_apt_entry_is_written_0600_and_removed_by_cleanup_after_expiry(tmp_path: Path, reference_server) -> None:
    srv = reference_server(credentials_ttl=2)
    w = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
    cfg_path = w.root / "fluxagent.toml"
    register(w)
    cfg_path.write_text(cfg_path.read_text().replace('min_remaining = "10s"', 'min_remaining = "0s"'))
    entry = tmp_path / "auth.conf.d" / "fluxagent.conf"
    entry.parent.mkdir()
    done = run_cli("--config", str(cfg_path), "credentials", "apt", "--path", str(entry))
    assert done.returncode == 0, done.stderr
    assert entry.stat().st_mode & 0o777 == 0o600
    machine, registry, login, user, password, secret = entry.read_text().split()
    assert (machine, registry, login, password) == ("machine", REGISTRY, "login", "password")
    assert srv.credentials_valid(user, secret)
    early = run_cli("--config", str(cfg_path), "credentials", "apt", "--cleanup", "--path", str(entry))
    assert "valid for another" in early.stdout and entry.exists()
    give_up = time.monotonic() + 10
    while True:  # until the credential expires: its removal is the event waited for
        late = run_cli("--config", str(cfg_path), "credentials", "apt", "--cleanup", "--path", str(entry))
        if "removed" in late.stdout or time.monotonic() > give_up:
            break
    assert late.returncode == 0 and "removed" in late.stdout
    assert not entry.exists()
    assert not (w.cfg.instance.state_dir / APT_STATE_FILE).exists()


def _engine(w: Workspace, log: object = None) -> Engine:
    cfg = config.load(w.root / "fluxagent.toml")
    return Engine(cfg, identity.load(cfg.instance.state_dir),
                  Deps(HttpxTransport(cfg.server), time.time, log=log))


def test_expired_credential_is_never_handed_out(ws: Workspace, server: ReferenceServer) -> None:
    mono = Clock(1000.0)
    engine = _engine(ws)
    cache = CredentialCache(lambda: fetch(engine, mono), mono, margin=10)
    first = cache.get()
    mono.now += 589  # 11 s left: still handed out, from memory
    assert cache.get() is first and len(server.issued_credentials) == 1
    mono.now += 2  # 9 s left, within the margin
    second = cache.get()
    assert second.secret != first.secret and len(server.issued_credentials) == 2
    mono.now += 10_000
    third = cache.get()
    assert third.secret not in (first.secret, second.secret)
    assert third.usable(mono(), 10)


def test_credentials_shorter_lived_than_the_margin_are_refused(tmp_path: Path, reference_server) -> None:
    srv = reference_server(credentials_ttl=5)
    w = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
    register(w)
    mono = Clock(1000.0)
    engine = _engine(w)
    cache = CredentialCache(lambda: fetch(engine, mono), mono, margin=10)
    with pytest.raises(CredentialsError, match="expire in 5s"):
        cache.get()


def test_apt_cleanup_with_an_injected_clock_keeps_then_removes_and_forgets_other_boots(tmp_path: Path,
                                                                                    ws: Workspace) -> None:
    mono = Clock(1000.0)
    cred = fetch(_engine(ws), mono)
    sd, entry = ws.cfg.instance.state_dir, tmp_path / "apt.conf"
    write_apt(entry, cred, sd, "boot-a")
    assert cleanup_apt(sd, entry, mono.now + 599, "boot-a").due_in == pytest.approx(1)
    assert entry.exists()
    assert cleanup_apt(sd, entry, mono.now + 600, "boot-a").removed and not entry.exists()
    write_apt(entry, cred, sd, "boot-a")
    assert cleanup_apt(sd, entry, mono.now, "boot-b").removed and not entry.exists()  # monotonic time restarted


def test_secret_appears_in_no_log_ledger_or_state_file(ws: Workspace, tmp_path: Path) -> None:
    entry = tmp_path / "apt.conf"
    cfg_path = ws.root / "fluxagent.toml"
    cfg_path.write_text(cfg_path.read_text().replace('level = "info"', 'level = "debug"'))
    env: dict[str, str] = {}
    docker = helper(ws, ["docker-credential-fluxagent", "get"], REGISTRY, **env)
    git = helper(ws, ["fluxagent", "credentials", "git", "get"], f"host={REGISTRY}\n\n", **env)
    apt = helper(ws, ["fluxagent", "credentials", "apt", "--path", str(entry)], "", **env)
    plain = helper(ws, ["fluxagent", "credentials"], "", **env)
    secrets = [json.loads(docker.stdout)["Secret"], dict(x.split("=", 1) for x in git.stdout.split())["password"],
               entry.read_text().split()[-1], json.loads(plain.stdout)["secret"]]
    assert len(set(secrets)) == 4
    logs_text = docker.stderr + git.stderr + apt.stderr + plain.stderr
    assert "credentials.issued" in logs_text  # the log did record the events
    sd = ws.cfg.instance.state_dir
    state_bytes = b"".join(p.read_bytes() for p in sd.rglob("*") if p.is_file())
    ledger = run_cli("--config", str(ws.root / "fluxagent.toml"), "log", "--json").stdout
    for s in secrets:
        assert s not in logs_text and s not in ledger
        assert s.encode() not in state_bytes
    issued = [e for e in Ledger(sd / "ledger", readonly=True).entries() if e.kind == "credentials"]
    assert len(issued) == 4 and all(e.outcome == "delivered" and "valid until" in (e.detail or "") for e in issued)


def test_credentials_for_an_unregistered_instance_are_refused_and_ledgered(tmp_path: Path,
                                                                          server: ReferenceServer) -> None:
    w = make_workspace(tmp_path / "ws", server_url=server.url, vendor_keys=server.signing_keys)
    done = run_cli("--config", str(w.root / "fluxagent.toml"), "credentials")
    assert done.returncode == 1 and "refused" in done.stderr and "403" in done.stderr
    last = next(Ledger(w.cfg.instance.state_dir / "ledger", readonly=True).entries(reverse=True))
    assert (last.kind, last.outcome, last.http_status) == ("credentials", "rejected", 403)



def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_while_the_daemon_runs_helpers_get_credentials_from_it_and_it_removes_the_expired_apt_entry(
    tmp_path: Path, reference_server,
) -> None:
    srv = reference_server(credentials_ttl=3)
    w = make_workspace(tmp_path / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
    cfg_path = w.root / "fluxagent.toml"
    entry = tmp_path / "apt.conf"  # the daemon removes the configured entry, never a path the state names
    cfg_path.write_text(cfg_path.read_text().replace('min_remaining = "10s"', 'min_remaining = "0s"')
                        .replace('"/etc/apt/auth.conf.d/fluxagent.conf"', f'"{entry}"'))
    sock = w.cfg.instance.state_dir / "control.sock"
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    daemon = subprocess.Popen([sys.executable, "-m", "fluxagent", "--config", str(cfg_path), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _wait_for(sock.exists, 20) and _wait_for(lambda: len(srv.received) >= 3, 20)
        first = helper(w, ["docker-credential-fluxagent", "get"], REGISTRY)
        second = helper(w, ["docker-credential-fluxagent", "get"], REGISTRY)
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout) == json.loads(second.stdout)  # from the daemon's memory
        assert len(srv.issued_credentials) == 1
        assert helper(w, ["fluxagent", "credentials", "apt"], "").returncode == 0
        assert entry.exists()
        assert _wait_for(lambda: not entry.exists(), 10)  # the daemon removed it once expired
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert "credentials.apt_entry_removed" in out
    assert not sock.exists()
    for cred in srv.issued_credentials:
        assert cred.secret not in out + err


@pytest.mark.parametrize(("requested", "expected"), [
    (REGISTRY, True), (f"https://{REGISTRY}", True), (f"https://{REGISTRY}/v2/", True), (f"{REGISTRY.upper()}.", True),
    (f"{REGISTRY}:443", True), (f"evil.{REGISTRY}", False), (f"{REGISTRY}.evil.example", False),
    ("https://index.docker.io/v1/", False), ("", False), (f"https://user@{REGISTRY}@evil.example", False),
])
def test_helpers_answer_only_for_the_registry_host(requested: str, expected: bool) -> None:
    assert matches(requested, REGISTRY) is expected


def test_git_request_parsing_stops_at_the_blank_line_and_the_credential_repr_hides_the_secret() -> None:
    req = parse_git_request(["protocol=https\n", f"host={REGISTRY}\n", "\n", "host=evil.example\n"])
    assert req == {"protocol": "https", "host": REGISTRY}
    cred = Credential("instance-x", "s3cr3t-value", REGISTRY, 100.0, 1_800_000_000)
    assert "s3cr3t-value" not in repr(cred)
    assert git_get(req, cred).splitlines() == ["username=instance-x", "password=s3cr3t-value",
                                               "password_expiry_utc=1800000000"]
    assert git_get({"host": "github.com"}, cred) == ""


def test_plain_credentials_print_the_secret_to_a_pipe_but_not_to_a_terminal(ws: Workspace,
                                                                            server: ReferenceServer) -> None:
    piped = json.loads(helper(ws, ["fluxagent", "credentials"], "").stdout)
    assert server.credentials_valid(piped["username"], piped["secret"]) and piped["registry"] == REGISTRY
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    done = subprocess.run([str(BIN / "fluxagent"), "--config", str(ws.root / "fluxagent.toml"), "credentials"],
                          stdout=slave, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    os.close(slave)
    try:
        shown = os.read(master, 65536).decode()
    finally:
        os.close(master)
    assert done.returncode == 0 and "not shown on a terminal" in shown
    assert len(server.issued_credentials) == 2
    assert all(c.secret not in shown for c in server.issued_credentials)


def test_updates_section_defaults_match_the_example_and_mistakes_name_their_dotted_path(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "fluxagent.example.toml"
    assert config.load(example).updates == config.UpdatesConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text('[instance]\nbound_domain = "billing.example.com"\n'
                   '[updates]\napt_auth_fle = "/tmp/x"\nmin_remaining = "2h"\n')
    with pytest.raises(ConfigError) as info:
        config.load(bad)
    assert any("updates.apt_auth_fle: unknown key (did you mean 'apt_auth_file'?)" in p for p in info.value.problems)
    assert any("updates.min_remaining:" in p and "out of range" in p for p in info.value.problems)


def test_daemon_keeps_running_without_a_control_socket_when_the_path_is_too_long(tmp_path: Path) -> None:
    w = make_workspace(tmp_path / ("d" * 110), server_url="http://127.0.0.1:9")
    d = Daemon(w.root / "fluxagent.toml")
    try:
        failed = d.wait_event("credentials.control_socket_unavailable")
        assert "cannot reach this daemon" in failed["effect"]
        d.wait_event("agent.started")
        assert d.proc.poll() is None and not (w.cfg.instance.state_dir / "control.sock").exists()
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()


def test_helpers_started_in_parallel_without_a_daemon_wait_for_the_lock_and_all_succeed(
    ws: Workspace, server: ReferenceServer
) -> None:
    full = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
    full["FLUXAGENT_CONFIG"] = str(ws.root / "fluxagent.toml")
    procs = [subprocess.Popen([str(BIN / "docker-credential-fluxagent"), "get"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full) for _ in range(3)]
    answers = [p.communicate(REGISTRY, timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], answers
    secrets = {json.loads(out)["Secret"] for out, _ in answers}
    assert len(secrets) == 3 and all(server.credentials_valid(f"instance-{ws_iid(ws)}", s) for s in secrets)
    seqs = [e.seq for e in Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True).entries()]
    assert len(seqs) == len(set(seqs))  # no seq used twice


def ws_iid(w: Workspace) -> str:
    return identity.load(w.cfg.instance.state_dir).instance_id


def test_idle_daemon_fetches_credentials_with_one_worker_then_answers_from_memory_without_network(
    ws: Workspace, server: ReferenceServer
) -> None:
    cfg_path = ws.root / "fluxagent.toml"
    cfg_path.write_text(cfg_path.read_text().replace('level = "info"', 'level = "debug"'))
    d = Daemon(cfg_path, env=clean_env())
    try:
        sock = ws.cfg.instance.state_dir / "control.sock"
        assert _wait_for(sock.exists, 20)
        assert _wait_for(lambda: bool(d.events("worker.finished")), 30)  # the first step is done: idle
        started = len(d.events("worker.started"))
        first = helper(ws, ["docker-credential-fluxagent", "get"], REGISTRY)
        assert first.returncode == 0, first.stdout + first.stderr
        assert [e["mode"] for e in d.events("worker.started")[started:]] == ["credentials"]
        assert len(server.issued_credentials) == 1
        requests = len(server.received)
        assert _wait_for(lambda: len(d.events("worker.finished")) == started + 1, 10)
        for _ in range(3):
            again = helper(ws, ["docker-credential-fluxagent", "get"], REGISTRY)
            assert json.loads(again.stdout) == json.loads(first.stdout)
        other = helper(ws, ["docker-credential-fluxagent", "get"], "https://index.docker.io/v1/")
        assert other.returncode == 1 and "not found" in other.stdout  # another registry: not even asked
        assert len(d.events("worker.started")) == started + 1  # no worker: from the supervisor's memory
        assert len(server.received) == requests  # and no network
        secret = json.loads(first.stdout)["Secret"]
        files = b"".join(p.read_bytes() for p in ws.root.rglob("*") if p.is_file())
        assert secret.encode() not in files
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        assert all(secret not in line for line in d.lines)
    finally:
        d.stop()
