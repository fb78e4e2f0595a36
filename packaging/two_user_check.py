"""The two-user deployment on the installed package; run by packaging/two-user-deb.sh as root.

    /opt/fluxagent/bin/python packaging/two_user_check.py WORKDIR

The reference licensing server runs in this process on 127.0.0.1; the daemon runs as the service
user `fluxagent`; every operator command runs as root. Exits non-zero at the first broken promise.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import tomli_w

from fluxagent.testing import sample
from fluxagent.testing.licenses import make_license
from fluxagent.testing.server import ReferenceServer

SERVICE = "fluxagent"
STATE = Path("/var/lib/fluxagent")
CONFIG = Path("/etc/fluxagent/fluxagent.toml")
EXAMPLES = (Path("/usr/share/doc/fluxagent/examples/fluxagent.toml"), Path("/etc/fluxagent/fluxagent.toml.example"))
REGISTRY = "registry.fluxbilling.example"
ENV = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"} | {"NO_PROXY": "127.0.0.1"}


def step(text: str) -> None:
    print(f"== {text}", flush=True)


def fail(text: str) -> None:
    print(f"two-user-deb: FAIL: {text}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def root(*args: str, stdin: str = "", program: str = "fluxagent") -> tuple[int, str]:
    """Run an installed command as root (working directory /); return its exit code and its output."""
    done = subprocess.run([program, *args], input=stdin, capture_output=True, text=True, env=ENV, cwd="/",
                          timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def expect(code: int, out: str, want: int, what: str) -> None:
    if code != want or "Traceback" in out:
        fail(f"{what}: exit {code} (expected {want}):\n{out}")
    print(f"ok: {what} (exit {code})", flush=True)


def uids_under(path: Path) -> set[int]:
    return {path.lstat().st_uid} | {p.lstat().st_uid for p in path.rglob("*")}


def as_service(path: Path, data: bytes | None = None, link_to: Path | None = None) -> None:
    """Plant a file or a link in the state dir as the (compromised) service user would."""
    if path.is_symlink() or path.exists():
        path.unlink()
    if link_to is not None:
        path.symlink_to(link_to)
    else:
        path.write_bytes(data or b"")
    pw = pwd.getpwnam(SERVICE)
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def configure(work: Path, server: ReferenceServer, apt_entry: Path) -> None:
    """Write the operator's config and license as the operator guide says (root:fluxagent 0640)."""
    db = sample.write_sqlite(work / "fluxbilling.db", sample.generate(clients=300, servers=20))
    db.chmod(0o644)
    now = int(time.time())
    example = next(p for p in EXAMPLES if p.exists())
    doc = tomllib.loads(example.read_text())
    doc["instance"]["bound_domain"] = "billing.example.com"
    doc["server"]["url"] = server.url
    doc["server"]["vendor_keys"] = [base64.b64encode(bytes(k.verify_key)).decode() for k in server.signing_keys]
    doc["platform"]["database"] = f"sqlite:///{db}"
    doc.setdefault("updates", {})["apt_auth_file"] = str(apt_entry)
    gid = pwd.getpwnam(SERVICE).pw_gid
    for path, data in ((CONFIG, tomli_w.dumps(doc).encode()),
                       (Path("/etc/fluxagent/license.json"),
                        make_license(server.signing_keys[0], license_id="FB-TWO-USERS-0001",
                                     bound_domain="billing.example.com", issued_at=now - 86400,
                                     expires_at=now + 365 * 86400))):
        path.write_bytes(data)
        os.chown(path, 0, gid)
        path.chmod(0o640)


def start_daemon(server: ReferenceServer) -> subprocess.Popen[str]:
    """Start `fluxagent run` as the service user, directly (what the unit's ExecStart does), and wait for it."""
    setpriv = shutil.which("setpriv") or fail("setpriv (util-linux) is missing")
    assert setpriv is not None
    daemon = subprocess.Popen([setpriv, f"--reuid={SERVICE}", f"--regid={SERVICE}", "--init-groups",
                               "/usr/bin/fluxagent", "--config", str(CONFIG), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd="/")
    deadline = time.monotonic() + 60
    while not ((STATE / "control.sock").exists() and len(server.received) >= 3):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            out, err = daemon.communicate()
            fail(f"the daemon did not come up (exit {daemon.returncode}):\n{out[-3000:]}{err[-3000:]}")
        time.sleep(0.1)
    print(f"ok: daemon runs as {SERVICE} (pid {daemon.pid}); license, heartbeat and digest delivered", flush=True)
    return daemon


def operate(apt_entry: Path, server: ReferenceServer) -> None:
    """Root uses the docker helper, credentials apt, --cleanup, validate and status beside the daemon."""
    code, out = root("get", stdin=f"https://{REGISTRY}\n", program="docker-credential-fluxagent")
    expect(code, out, 0, "docker-credential-fluxagent get, as root")
    secret = json.loads(out)["Secret"]
    code, out = root("credentials", "apt")
    expect(code, out, 0, "fluxagent credentials apt, as root")
    st = apt_entry.stat()
    if (st.st_uid, st.st_mode & 0o777) != (0, 0o600) or secret not in apt_entry.read_text():
        fail(f"the apt entry {apt_entry} is not root's 0600 file holding the daemon's credential")
    code, out = root("credentials", "apt", "--cleanup")
    expect(code, out, 0, "fluxagent credentials apt --cleanup, as root (entry not yet expired)")
    if not apt_entry.exists():
        fail("--cleanup removed an entry that has not expired")
    for args in (["validate"], ["status"], ["log", "--verify"]):
        code, out = root(*args)
        expect(code, out, 0, f"fluxagent {' '.join(args)}, as root")
    if len(server.issued_credentials) != 1:
        fail(f"{len(server.issued_credentials)} credential requests: root's helpers must use the daemon's")


def planted(work: Path, apt_entry: Path) -> None:
    """Records and links the service user plants in its state dir cannot make root touch anything outside."""
    victims = {work / "victim-record": b"named by a planted record\n",
               work / "victim-link": b"behind a planted link\n"}
    for path, data in victims.items():
        path.write_bytes(data)
        path.chmod(0o600)
    record = STATE / "apt-credentials.json"
    stale = {"path": str(work / "victim-record"), "expires_boottime": 0, "boot_id": "planted",
             "expires_at": "2000-01-01T00:00:00Z"}
    as_service(record, json.dumps(stale).encode())
    code, out = root("credentials", "apt", "--cleanup")
    print(f"ok: --cleanup with a planted record naming another file: exit {code}", flush=True)
    as_service(record, link_to=work / "victim-link")
    code, out = root("credentials", "apt", "--cleanup")
    print(f"ok: --cleanup with the record a link to a root file: exit {code}", flush=True)
    if "Traceback" in out:
        fail(f"--cleanup with a planted link crashed:\n{out}")
    as_service(record, link_to=work / "victim-link")
    code, out = root("credentials", "apt")
    expect(code, out, 0, "fluxagent credentials apt, as root, with the record a planted link")
    if record.is_symlink():
        fail("credentials apt wrote through a planted link instead of replacing it")
    for path, data in victims.items():
        if not path.exists() or path.read_bytes() != data or path.stat().st_uid != 0:
            fail(f"root touched {path} outside the state directory")
    print("ok: no file outside the state directory was removed or written", flush=True)
    code, out = root("credentials", "apt", "--cleanup")
    expect(code, out, 0, "fluxagent credentials apt --cleanup, as root, after the planted files")


def main() -> int:
    work = Path(sys.argv[1])
    apt_dir = work / "auth.conf.d"  # root's, like /etc/apt/auth.conf.d: the service user cannot write it
    apt_dir.mkdir(mode=0o755)
    apt_entry = apt_dir / "fluxagent.conf"
    with ReferenceServer(credentials_ttl=600) as server:
        step("configure as root: config and license root:fluxagent 0640, init as root")
        configure(work, server, apt_entry)
        code, out = root("init")
        expect(code, out, 0, "fluxagent init, as root")
        if uids_under(STATE) != {pwd.getpwnam(SERVICE).pw_uid}:
            fail(f"init as root left files in {STATE} that are not {SERVICE}'s")
        step(f"the daemon, as {SERVICE}")
        daemon = start_daemon(server)
        try:
            step("root operates beside it")
            operate(apt_entry, server)
            step("planted records and links")
            planted(work, apt_entry)
            if daemon.poll() is not None:
                fail(f"the daemon exited ({daemon.returncode}) while root operated")
        finally:
            daemon.send_signal(signal.SIGTERM)
            out, err = daemon.communicate(timeout=60)
        if daemon.returncode != 0:
            fail(f"the daemon stopped with exit {daemon.returncode}:\n{err[-3000:]}")
        for cred in server.issued_credentials:
            if cred.secret in out + err:
                fail("the daemon logged an update credential")
        not_service = {p for p in [STATE, *STATE.rglob("*")] if p.lstat().st_uid != pwd.getpwnam(SERVICE).pw_uid}
        if not_service:
            fail(f"files in {STATE} not owned by {SERVICE}: {sorted(map(str, not_service))}")
        print(f"ok: the daemon stopped cleanly; everything in {STATE} is still {SERVICE}'s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
