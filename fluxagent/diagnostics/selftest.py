"""Sandbox self-test: the agent's real work under the unit's SystemCallFilter, MemoryDenyWriteExecute
and RestrictAddressFamilies, so a dependency needing W+X memory or a filtered call fails here first.

    python -m fluxagent.diagnostics.selftest [--unit /lib/systemd/system/fluxagent.service]

The parent runs the reference server on loopback and a NOTIFY_SOCKET; a child loads the filters
(libseccomp), then execs a fresh interpreter, so start-up and every import run filtered too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fluxagent.config import Config

DEFAULT_UNIT = Path("/lib/systemd/system/fluxagent.service")
ME = "fluxagent.diagnostics.selftest"


def apply_and_exec(spec_path: Path, rest: list[str]) -> None:
    """Load the filters described in spec_path, then exec this module's workload stage (never returns)."""
    from fluxagent.diagnostics.seccomp import Filter, Libseccomp, Rule

    lib = Libseccomp()
    for f in json.loads(spec_path.read_text()):
        lib.load(Filter(f["default"], tuple(Rule(r[0], r[1], tuple(map(tuple, r[2]))) for r in f["rules"])))
    os.execv(sys.executable, [sys.executable, "-m", ME, "--workload", *rest])


def _expect_refused(what: str, fn: Callable[[], object], errno_name: str) -> str:
    import errno

    try:
        fn()
    except OSError as exc:
        if exc.errno != getattr(errno, errno_name):
            raise
        return f"{what} refused ({errno_name}): the filter is live"
    raise AssertionError(f"{what} was allowed: the filter is not active")


def workload(config: Path, checks: list[str]) -> int:
    """Run the agent's work (under the filters) and print one line per step; return 0 when all pass."""
    import traceback

    failed = 0

    def step(name: str, fn: Callable[[], str]) -> None:
        nonlocal failed
        try:
            print(f"  ok    {name}: {fn()}", flush=True)
        except BaseException as exc:  # report every step, whatever broke
            failed += 1
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f"  FAIL  {name}: {last}", flush=True)

    import mmap

    if "mdwe" in checks:
        wx = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        step("canary", lambda: _expect_refused("a W+X mapping", lambda: mmap.mmap(-1, 4096, prot=wx), "EPERM"))
    if "families" in checks:
        raw = (socket.AF_PACKET, socket.SOCK_RAW)
        step("canary", lambda: _expect_refused("an AF_PACKET socket", lambda: socket.socket(*raw), "EAFNOSUPPORT"))
    if "setpriority" in checks:
        step("canary", lambda: _expect_refused("setpriority()", lambda: os.setpriority(
            os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0)), "EPERM"))
    from fluxagent import config as config_mod

    cfg = config_mod.load(config)
    sd = cfg.instance.state_dir
    step("run --once", lambda: _run_once(config))
    step("daemon", lambda: _daemon(config))
    step("sign+hash", _sign_and_hash)
    step("psutil", _psutil)
    step("flock", lambda: _flock(sd))
    step("metrics.prom", lambda: _metrics(cfg))
    step("log --verify", lambda: _ledger(sd))
    step("sd_notify", _notify)
    step("database drivers", _drivers)
    return 1 if failed else 0


def _run_once(config: Path) -> str:
    import io

    from fluxagent.daemon.agent import run

    buf = io.StringIO()
    code = run(config, once=True, log_stream=buf)
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert code == 0, f"exit {code}; log: {buf.getvalue()[-600:]}"
    sent = [e for e in events if e.endswith(".sent")]
    return f"exit 0; {', '.join(sent)} (httpx, spool fsync, ledger)"


def _daemon(config: Path) -> str:
    """Run `fluxagent run` (the unit's command) under the filters: READY, WATCHDOG, then SIGTERM → exit 0."""
    import time

    seen: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fa-sd-", dir="/tmp") as d, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(f"{d}/notify")
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID")}
        env.update(NOTIFY_SOCKET=f"{d}/notify", WATCHDOG_USEC="60000000")
        proc = subprocess.Popen([sys.executable, "-m", "fluxagent", "--config", str(config), "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            end = time.monotonic() + 60
            sock.settimeout(0.25)
            while "STOPPING=1" not in seen and time.monotonic() < end:
                try:
                    seen += sock.recv(4096).decode().splitlines()
                except TimeoutError:
                    if proc.poll() is not None:
                        break  # it died without saying goodbye
                    continue
                if "WATCHDOG=1" in seen and proc.poll() is None and "STOPPING=1" not in seen:
                    proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = proc.stderr.read() if proc.stderr else ""
    assert code == 0, f"exit {code}: {err[-600:]}"
    missing = [m for m in ("READY=1", "WATCHDOG=1", "STOPPING=1") if m not in seen]
    assert not missing, f"no {', '.join(missing)} from the daemon; got {seen}"
    return "READY, STATUS, WATCHDOG; SIGTERM → STOPPING, exit 0"


def _sign_and_hash() -> str:
    import hashlib

    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    key.verify_key.verify(key.sign(b"fluxagent"))
    hashlib.blake2b(b"10.0.0.1", key=os.urandom(32), person=b"fa1-ip", digest_size=16).hexdigest()
    return "Ed25519 sign/verify, keyed blake2b"


def _psutil() -> str:
    import psutil

    ifs = psutil.net_if_addrs()
    psutil.boot_time()
    psutil.cpu_percent(None)
    psutil.virtual_memory()
    psutil.Process().memory_info()
    return f"{len(ifs)} interfaces, boot time, cpu, memory"


def _flock(sd: Path) -> str:
    from fluxagent.errors import LockHeld
    from fluxagent.statedir.lock import instance_lock

    with instance_lock(sd):
        try:
            with instance_lock(sd):
                raise AssertionError("a second lock was granted")
        except LockHeld:
            pass
    return "exclusive lock held, second holder refused"


def _metrics(cfg: Config) -> str:
    import time

    from fluxagent.daemon.metrics import MetricsWriter

    assert MetricsWriter().write(cfg, time.time()), "write failed"
    return "written atomically"


def _ledger(sd: Path) -> str:
    from fluxagent.statedir.ledger import Ledger

    res = Ledger(sd / "ledger", readonly=True).verify()
    assert res.ok, res.reason
    return f"{res.checked} entries, chain intact"


def _notify() -> str:
    from fluxagent.daemon.notify import Notifier

    assert Notifier().ready("self-test"), "READY=1 not sent"
    return "READY=1 sent over NOTIFY_SOCKET"


def _drivers() -> str:
    """Load the PostgreSQL and MySQL drivers the package ships (libpq, OpenSSL) under the filters."""
    import importlib
    import importlib.util

    loaded = []
    if importlib.util.find_spec("psycopg") is not None:
        pg = importlib.import_module("psycopg")  # imported by name: an optional extra, maybe without stubs
        loaded.append(f"psycopg {pg.__version__} (libpq {pg.pq.version()}, {pg.pq.__impl__})")
    if importlib.util.find_spec("pymysql") is not None:
        loaded.append(f"PyMySQL {importlib.import_module('pymysql').__version__}")
    return ", ".join(loaded) or "none installed"


def _tls_context(work: Path) -> tuple[object | None, Path | None]:
    """Return (server SSL context, CA file) when trustme is installed (tests), else (None, None)."""
    try:
        import ssl

        import trustme
    except ImportError:
        return None, None
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ctx, ca_file


def main(argv: list[str] | None = None) -> int:
    """Run the self-test against a unit file; print the report; return 0 on success."""
    ap = argparse.ArgumentParser(prog=f"python -m {ME}", description=__doc__.splitlines()[0])
    ap.add_argument("--unit", type=Path, default=DEFAULT_UNIT)
    ap.add_argument("--workload", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--apply", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.apply:
        apply_and_exec(Path(args.apply[0]), args.apply[1:])
    if args.workload:
        return workload(Path(args.workload[0]), args.workload[1].split(","))
    with tempfile.TemporaryDirectory(prefix="fluxagent-selftest-") as tmp:
        return _parent(args.unit, Path(tmp))


def _parent(unit: Path, work: Path) -> int:
    import tomli_w

    from fluxagent.diagnostics.sandbox import filters, systemd_groups, unit_sandbox
    from fluxagent.diagnostics.seccomp import Libseccomp
    from fluxagent.testing.server import ReferenceServer
    from fluxagent.testing.workspace import make_workspace

    sb = unit_sandbox(unit.read_text(encoding="utf-8"), systemd_groups())
    native = sum(Libseccomp().resolve(n) is not None for n in sb.syscalls)
    how = os.strerror(sb.error_number) if sb.error_number else "SIGSYS (killed)"
    print(f"fluxagent sandbox self-test — {unit}")
    print(f"  SystemCallFilter: {'allow' if sb.allow_list else 'deny'} list of {len(sb.syscalls)} calls "
          f"({native} on {os.uname().machine}); others: {how}")
    print(f"  MemoryDenyWriteExecute: {'yes' if sb.deny_write_execute else 'no'}; "
          f"RestrictAddressFamilies: {' '.join(sb.address_families or ('any',))}")
    spec = work / "filters.json"
    spec.write_text(json.dumps([{"default": f.default, "rules": [[r.syscall, r.action, r.conditions] for r in f.rules]}
                                for f in filters(sb)]))
    denied = ("setpriority" not in sb.syscalls) if sb.allow_list else ("setpriority" in sb.syscalls)
    checks = [c for c, on in (("mdwe", sb.deny_write_execute), ("families", sb.address_families is not None),
                              ("setpriority", denied)) if on] or ["none"]
    ctx, ca_file = _tls_context(work)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(work / "notify"))
    with notify, ReferenceServer(ssl_context=ctx) as srv:  # type: ignore[arg-type]
        ws = make_workspace(work / "ws", server_url=srv.url, vendor_keys=srv.signing_keys)
        cfg_path = ws.root / "fluxagent.toml"
        if ca_file is not None:
            import tomllib

            doc = tomllib.loads(cfg_path.read_text())
            doc["server"]["ca_bundle"] = str(ca_file)
            cfg_path.write_text(tomli_w.dumps(doc))
        print(f"  server: {srv.url} (reference server, {'TLS' if ctx else 'plain HTTP'})", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "FLUXAGENT_CONFIG"}
        env.update(NOTIFY_SOCKET=str(work / "notify"), PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([sys.executable, "-m", ME, "--apply", str(spec), str(cfg_path), ",".join(checks)],
                              env=env, timeout=300, check=False, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
        answered = [(r.endpoint, r.status) for r in srv.received]
        notify_ok = _drain(notify)
    ok = proc.returncode == 0 and notify_ok and answered and all(s == 200 for _, s in answered)
    if proc.returncode < 0:
        print(f"  FAIL  child killed by {signal.Signals(-proc.returncode).name}"
              + (" (a filtered system call)" if -proc.returncode == signal.SIGSYS else ""))
    if proc.returncode and proc.stderr:
        print("  stderr: " + proc.stderr.strip()[-1500:].replace("\n", "\n          "))
    print(f"  server answered: {', '.join(f'{e} {s}' for e, s in answered) or 'nothing'}; "
          f"READY=1 {'received' if notify_ok else 'NOT received'}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def _drain(sock: socket.socket) -> bool:
    sock.setblocking(False)
    got = b""
    while True:
        try:
            got += sock.recv(65536) + b"\n"
        except BlockingIOError:
            return b"READY=1" in got


if __name__ == "__main__":
    sys.exit(main())
