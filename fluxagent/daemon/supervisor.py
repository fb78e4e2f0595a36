"""`fluxagent run`: the resident supervisor (docs/ARCHITECTURE.md, "The daemon").

It imports the standard library only (a test inspects its `sys.modules`), so idling costs the
interpreter and little else, whatever the inventory. It holds the instance lock, the timers, the
signals, sd_notify, the control socket and short-lived update credentials in memory; it waits in
one `select` with the next timer as timeout, so it uses no CPU between events. The work itself is
done by a worker process per event (worker.py: the full library stack), which inherits the lock,
reports over a pipe and exits. A worker that overruns its deadline is stopped (TERM, then KILL);
a worker that dies, however, is a failed step with backoff, never the supervisor's end.

    python -m fluxagent.daemon.supervisor --config PATH [--stop-deadline S] [--worker-deadline S] [--step-backoff S]

(`fluxagent run` is the same with the defaults; the options let tests and benchmarks use short times.)
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path

from fluxagent.daemon import early
from fluxagent.daemon.control import Conn, ControlServer, CredentialMemory, usage_error
from fluxagent.daemon.notify import Notifier
from fluxagent.errors import EXIT_IOERR, EXIT_OK, EXIT_USAGE, FluxError, StateError
from fluxagent.logfmt import Logger
from fluxagent.statedir.fsutil import atomic_write, remove_stray_temp
from fluxagent.statedir.lock import instance_lock
from fluxagent.updates.aptexpiry import boot_id, cleanup_apt

TYPE_CHECKING = False  # typing is not imported at run time: the supervisor stays small
if TYPE_CHECKING:
    from typing import Any

STOP_DEADLINE = 20.0  # a worker still busy this long after SIGTERM is killed (TimeoutStopSec is 30 s)
WORKER_DEADLINE = 240.0  # without a watchdog; with one, 0.8 of its interval (but never under the floor)
WORKER_DEADLINE_FLOOR = 30.0
KILL_GRACE = 5.0  # after TERM, a worker that overran its deadline gets this long before KILL
START_ATTEMPTS = 4  # a config check worker killed at start is tried again (after 1, 2, 4 s), then exit 74
STEP_BACKOFF_BASE = 30.0
STEP_BACKOFF_CAP = 3600.0
STATE_FILE = "supervisor.json"
USAGE = ("python -m fluxagent.daemon.supervisor --config PATH [--stop-deadline S] [--worker-deadline S]"
         " [--step-backoff S]")
WORKER_ENV_DROP = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # only the supervisor notifies systemd


def clock() -> float:
    """The supervisor's timer clock: monotonic, and counting through suspend (a late timer fires at resume)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def step_backoff(failures: int, base: float = STEP_BACKOFF_BASE) -> float:
    """Return the wait after a failed step: full jitter, uniform(0, min(cap, base·2ⁿ)), at least base/30."""
    ceiling = min(STEP_BACKOFF_CAP, base * float(1 << min(failures, 30)))
    return max(base / 30, ceiling * int.from_bytes(os.urandom(4), "big") / 2**32)


def describe_exit(code: int) -> str:
    """Return a wait status as people read it: "exit 3", "killed by SIGKILL"."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class Worker:
    """A running worker: its pid, its report pipe and what it reported so far."""

    def __init__(self, mode: str, pid: int, fd: int, deadline: float) -> None:
        self.mode, self.pid, self.fd = mode, pid, fd
        self.started, self.started_wall = clock(), time.time()
        self.deadline = deadline  # on clock()
        self.buf = b""
        self.reports: dict[str, dict[str, Any]] = {}
        self.eof = False
        self.code: int | None = None
        self.term_at: float | None = None
        self.killed = False  # SIGKILL sent: only its SIGCHLD is awaited
        self.overran = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Take bytes from the pipe; return the complete report lines among them."""
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a worker is the trusted side of the pipe, but a torn line must not end us
            if isinstance(obj, dict) and isinstance(obj.get("t"), str):
                self.reports[obj["t"]] = obj
                out.append(obj)
        return out


class Supervisor:
    """The resident process; `run` is its loop."""

    def __init__(self, config_path: Path, *, stop_deadline: float = STOP_DEADLINE,
                 worker_deadline: float | None = None, step_backoff: float = STEP_BACKOFF_BASE) -> None:
        self.path = config_path
        self.stop_deadline = stop_deadline
        self.backoff_base = step_backoff
        self.notifier = Notifier()
        wd = self.notifier.watchdog_interval
        self.worker_deadline = worker_deadline if worker_deadline is not None else (
            max(WORKER_DEADLINE_FLOOR, 0.8 * wd) if wd else WORKER_DEADLINE)
        self.log = Logger(sys.stdout, env=os.environ)
        self.sel = selectors.DefaultSelector()
        self.env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV_DROP}
        self.text = ""  # the accepted config file's text: what every worker parses
        self.values: dict[str, Any] = {}
        self.status = "starting"
        self.lock_fd = -1
        self.worker: Worker | None = None
        self.first_step = True
        self.next_step = clock()
        self.failed_steps = 0
        self.memory = CredentialMemory()
        self.waiters: list[Conn] = []  # credentials requests the memory could not answer
        self.checkers: list[Conn] = []  # live license checks (`validate` beside the running daemon)
        self.conns: list[Conn] = []
        self.control: ControlServer | None = None
        self.apt_due: float | None = None
        self.stop = self.reload = self.child = False
        self.stop_at: float | None = None
        self.forced = False
        self.last_worker: dict[str, Any] | None = None
        self._sig_r = self._sig_w = -1
        self.started_wall = time.time()

    # ---- workers ----

    def spawn(self, mode: str, request: dict[str, Any], *, locked: bool) -> Worker | None:
        """Start a worker; return it, or None (logged, a failed step) when the system refuses."""
        r, w = os.pipe()
        ir, iw = os.pipe()
        argv = [sys.executable, "-m", "fluxagent.daemon.worker", mode, "--config", str(self.path),
                "--parent", str(os.getpid()), "--in-fd", str(ir), "--report-fd", str(w),
                "--budget", f"{self.worker_deadline:g}"]
        if locked:
            argv += ["--lock-fd", str(self.lock_fd)]
        if mode == "step" and self.first_step:
            argv.append("--first")
        try:
            for fd in (w, ir, *((self.lock_fd,) if locked else ())):
                os.set_inheritable(fd, True)
            # /proc/self/exe: exactly the interpreter running, even where the service user cannot reach
            # the path it was started by; argv[0] keeps that path, so the worker finds the same venv
            exe = "/proc/self/exe" if os.path.exists("/proc/self/exe") else sys.executable
            pid = os.posix_spawn(exe, argv, self.env)
        except OSError as exc:
            for fd in (r, iw):
                os.close(fd)
            self.log.error("worker.failed", mode=mode, error=f"cannot start a worker: {exc.strerror or exc}")
            return None
        finally:
            os.close(w)
            os.close(ir)
            if locked:
                os.set_inheritable(self.lock_fd, False)
        with contextlib.suppress(OSError), os.fdopen(iw, "wb") as f:  # a config is small; the worker reads it first
            f.write(json.dumps(request).encode())
        os.set_blocking(r, False)
        self.log.debug("worker.started", mode=mode, pid=pid)
        worker = Worker(mode, pid, r, clock() + self.worker_deadline)
        self.sel.register(r, selectors.EVENT_READ, "worker")
        return worker

    def read_worker(self, worker: Worker) -> None:
        """Read the worker's pipe until it would block; handle each report line."""
        while not worker.eof:
            try:
                data = os.read(worker.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                worker.eof = True
                self.sel.unregister(worker.fd)
                os.close(worker.fd)
                return
            for report in worker.feed(data):
                self.on_report(worker, report)

    def on_report(self, worker: Worker, report: dict[str, Any]) -> None:
        if report["t"] == "credentials" and isinstance(report.get("answer"), dict):
            answer = report["answer"]
            self.memory.put(answer)
            for conn in self.waiters:
                conn.answer(answer)
            self.waiters.clear()
        elif report["t"] == "license" and isinstance(report.get("answer"), dict):
            for conn in self.checkers:
                conn.answer(report["answer"])
            self.checkers.clear()
        elif isinstance(report.get("status"), str):
            self.status = report["status"]
            self.notifier.status(self.status)

    def reap(self) -> None:
        """Collect the worker's exit; once it exited and its pipe is drained, finish it."""
        worker = self.worker
        if worker is None:
            return
        if worker.code is None:
            try:
                pid, wstatus = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, wstatus = worker.pid, 255 << 8
            if pid == 0:
                return
            worker.code = os.waitstatus_to_exitcode(wstatus)
        self.read_worker(worker)
        if not worker.eof:  # exited, but a child of its own still holds the pipe: stop waiting for it
            self.sel.unregister(worker.fd)
            os.close(worker.fd)
            worker.eof = True
        self.worker = None
        self.finish(worker)

    def finish(self, worker: Worker) -> None:
        """Account for a finished worker: adopt a config, schedule the next step, or count a failure."""
        code = worker.code if worker.code is not None else -9
        outcome = "overran its deadline" if worker.overran else describe_exit(code)
        done = worker.reports.get("config" if worker.mode == "check" else "done")
        ok = code == 0 and done is not None and not worker.overran
        now = clock()
        if worker.mode == "check":
            if ok and done is not None and done.get("ok"):
                self.adopt(done)
            elif not ok:
                self.log.error("worker.failed", mode="check", outcome=outcome, keeping="previous configuration")
            self.notifier.ready(self.status)
        elif ok and done is not None:
            self.first_step = False
            self.failed_steps = 0
            wake = float(done.get("next_wake") or 0) - time.time()
            if worker.mode == "step":
                self.next_step = now + max(0.0, wake)
            else:
                self.next_step = min(self.next_step, now + max(0.0, wake))
        else:
            self.failed_steps += 1
            delay = step_backoff(self.failed_steps, self.backoff_base)
            self.next_step = now + delay
            self.log.warning("worker.failed", mode=worker.mode, outcome=outcome, failures=self.failed_steps,
                             retry_in=int(delay))
            self.notifier.status(f"{self.status}; last step failed ({outcome}), next in {int(delay)}s")
            if code < 0:  # killed mid-write: its temp files go now (we hold the lock, no worker runs)
                with contextlib.suppress(OSError):
                    stray = remove_stray_temp(Path(self.values["state_dir"]))
                    if stray:
                        self.log.info("state.stray_temp_removed", files=stray)
        # requests left unanswered by the worker that was to answer them (other workers leave them waiting)
        if worker.mode == "credentials":
            for conn in self.waiters:
                conn.answer({"ok": False, "code": "unavailable", "exit_code": 69,
                             "message": f"the daemon's worker could not fetch credentials ({outcome})"})
            self.waiters.clear()
        if worker.mode == "license":
            for conn in self.checkers:
                conn.answer({"ok": False, "code": "unavailable", "exit_code": 69,
                             "message": f"the daemon's worker could not check the license ({outcome})"})
            self.checkers.clear()
        self.last_worker = {"mode": worker.mode, "pid": worker.pid, "started": int(worker.started_wall),
                            "ended": int(time.time()), "outcome": outcome, "ok": ok}
        self.log.debug("worker.finished", mode=worker.mode, pid=worker.pid, outcome=outcome, ok=ok,
                       seconds=round(clock() - worker.started, 3))
        self.save_state()

    def adopt(self, report: dict[str, Any]) -> None:
        """Take a config a check worker accepted: its text, the values the supervisor needs, the log format."""
        self.text = str(report["text"])
        self.values = dict(report["values"])
        self.log.configure(str(self.values["log_format"]), str(self.values["log_level"]), os.environ)
        if isinstance(report.get("status"), str):
            self.status = report["status"]

    def police(self, now: float) -> None:
        """Stop a worker past its deadline (TERM, then KILL after a grace) or past the stop deadline."""
        worker = self.worker
        if worker is None or worker.code is not None or worker.killed:
            return
        if self.stop_at is not None and now >= self.stop_at:
            self.forced = True
            self._kill(worker, signal.SIGKILL)
        elif worker.term_at is None and now >= worker.deadline:
            worker.overran = True
            worker.term_at = now
            self.log.warning("worker.overran", mode=worker.mode, deadline=int(self.worker_deadline))
            self._kill(worker, signal.SIGTERM)
        elif worker.term_at is not None and worker.overran and now >= worker.term_at + KILL_GRACE:
            self._kill(worker, signal.SIGKILL)

    def _kill(self, worker: Worker, sig: int) -> None:
        worker.killed = worker.killed or sig == signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    # ---- state shown by `status` ----

    def save_state(self) -> None:
        """Write supervisor.json (pid, start, the last worker) for `status`; a failure is logged, not fatal."""
        sd = Path(self.values["state_dir"])
        doc = {"v": 1, "pid": os.getpid(), "started": int(self.started_wall), "failed_steps": self.failed_steps,
               "running": not self.stop or self.worker is not None, "last_worker": self.last_worker}
        try:
            atomic_write(sd / STATE_FILE, json.dumps(doc, sort_keys=True).encode() + b"\n", mode=0o640)
        except OSError as exc:
            self.log.warning("supervisor.state_write_failed", path=str(sd / STATE_FILE), error=str(exc))

    def load_state(self) -> None:
        """Resume the failure streak and the last worker of a previous run (shown by `status`)."""
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads((Path(self.values["state_dir"]) / STATE_FILE).read_bytes())
            if isinstance(doc, dict):
                if isinstance(doc.get("failed_steps"), int):
                    self.failed_steps = doc["failed_steps"]
                if isinstance(doc.get("last_worker"), dict):
                    self.last_worker = doc["last_worker"]

    # ---- the control socket ----

    def on_request(self, conn: Conn) -> None:
        req = conn.request or ""
        if req == "credentials":
            if self.stop:
                conn.answer({"ok": False, "code": "unavailable", "exit_code": 69, "message": "the daemon is stopping"})
                return
            answer = self.memory.get(float(self.values.get("min_remaining", 10.0)))
            if answer is not None:
                conn.answer(answer)  # from memory: no worker, no network
            else:
                self.waiters.append(conn)
        elif req == "license-check":  # a fresh, signed check: only the daemon may seal while it runs
            if self.stop:
                conn.answer({"ok": False, "code": "unavailable", "exit_code": 69, "message": "the daemon is stopping"})
                return
            self.checkers.append(conn)
        elif req == "wake":  # an apt entry was written: remove it when it expires
            self.apt_tick()
            conn.answer({"ok": True})
        elif req == "modules":  # what this process has imported: it must stay the standard library
            conn.answer({"ok": True, "pid": os.getpid(), "modules": sorted(sys.modules)})
        else:
            conn.answer(usage_error(req))

    def apt_tick(self) -> None:
        """Remove the apt entry if it has expired, otherwise remember when it does."""
        self.apt_due = None
        try:
            done = cleanup_apt(Path(self.values["state_dir"]), Path(self.values["apt_auth_file"]),
                               time.clock_gettime(time.CLOCK_BOOTTIME), boot_id())
        except FluxError as exc:
            self.log.error("credentials.apt_cleanup_failed", error=exc.message)
            return
        if done.removed:
            self.log.info("credentials.apt_entry_removed")
        if done.due_in is not None:
            self.apt_due = clock() + done.due_in + 0.05

    # ---- signals ----

    def _on_stop(self, _sig: int, _frame: object) -> None:
        self.stop = True

    def _on_reload(self, _sig: int, _frame: object) -> None:
        self.reload = True

    def _on_child(self, _sig: int, _frame: object) -> None:
        self.child = True

    def install_signals(self) -> None:
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGCHLD, self._on_child)
        self.sel.register(self._sig_r, selectors.EVENT_READ, "signal")
        caught = early.take()  # what arrived while `run` was starting: a stop then is a graceful stop now
        self.stop = self.stop or bool(caught & {signal.SIGTERM, signal.SIGINT})
        self.reload = self.reload or signal.SIGHUP in caught

    # ---- start and loop ----

    def start_check(self) -> int | None:
        """Have a worker check the config file before anything else; None when it accepted it, else the
        exit code: the worker's own when it refused the config (it said why on stderr), 0 when a stop
        came meanwhile. A check worker that died (a signal) is tried again a few times."""
        for attempt in range(START_ATTEMPTS):
            worker = self.spawn("check", {}, locked=False)
            code = -1
            if worker is not None:
                while not worker.eof:
                    self.sel.select(None)
                    self.read_worker(worker)
                _pid, wstatus = os.waitpid(worker.pid, 0)
                code = os.waitstatus_to_exitcode(wstatus)
                report = worker.reports.get("config")
                if code == 0 and report is not None and report.get("ok"):
                    self.adopt(report)
                    return None
                if code > 0:
                    return code
                self.log.warning("worker.failed", mode="check", outcome=describe_exit(code), attempt=attempt + 1)
            if self._stopped_while_waiting(float(1 << attempt)):
                return EXIT_OK
        return EXIT_IOERR

    def _stopped_while_waiting(self, seconds: float) -> bool:
        """Wait seconds before trying again; return True at once when a stop arrived while starting."""
        end = clock() + seconds
        while clock() < end:
            if early.pending() & {signal.SIGTERM, signal.SIGINT}:
                return True
            time.sleep(0.05)
        return False

    def run(self) -> int:
        """Check the config, take the lock, serve until SIGTERM; return the exit code."""
        faulthandler.enable()
        code = self.start_check()
        if code is not None:
            return code
        sd = Path(self.values["state_dir"])
        try:
            with instance_lock(sd) as fd:
                self.lock_fd = fd
                return self._serve(sd)
        except FluxError as exc:
            print(f"fluxagent: {exc.code} error: {exc}", file=sys.stderr)
            return exc.exit_code

    def _serve(self, sd: Path) -> int:
        self.install_signals()
        stray = remove_stray_temp(sd)  # temp files a kill left behind; only the lock holder writes here
        if stray:
            self.log.info("state.stray_temp_removed", files=stray)
        self.load_state()
        try:
            self.control = ControlServer(sd)
            self.sel.register(self.control, selectors.EVENT_READ, "control")
        except OSError as exc:  # e.g. a state dir path too long for a Unix socket: the agent still runs
            self.log.error("credentials.control_socket_unavailable", error=exc.strerror or str(exc),
                           effect="`fluxagent credentials` cannot reach this daemon")
        self.apt_tick()
        self.save_state()
        self.notifier.ready(self.status)
        self.log.info("agent.started", pid=os.getpid(), state_dir=str(sd))
        try:
            self.loop()
        finally:
            for conn in [*self.conns, *self.waiters, *self.checkers]:
                conn.close()
            if self.control is not None:
                self.control.close()
        if self.forced:
            self.log.warning("agent.stopping", spool=spool_depth(sd),
                             forced=f"a step overran the {self.stop_deadline:g}s stop deadline")
        else:
            self.log.info("agent.stopping", spool=spool_depth(sd))
        self.save_state()
        return EXIT_OK

    def loop(self) -> None:
        wd = self.notifier.watchdog_interval
        next_ping = clock()
        while True:
            now = clock()
            if self.stop and self.stop_at is None:
                self.stop_at = now + self.stop_deadline
                self.notifier.stopping()
                if self.worker is not None:
                    self._kill(self.worker, signal.SIGTERM)  # it finishes the message in flight
            if self.stop and self.worker is None:
                return
            if self.worker is None and not self.stop:
                self.start_next(now)
            self.police(now)
            if wd and now >= next_ping:
                self.notifier.watchdog()  # only a loop that is turning gets here
                next_ping = now + wd / 2
            timeout = self.timeout(now, next_ping if wd else None)
            for key, _mask in self.sel.select(timeout):
                self.on_ready(key.data)
            if self.child:
                self.child = False
                self.reap()
            if self.apt_due is not None and clock() >= self.apt_due:
                self.apt_tick()
            self.expire_conns()

    def start_next(self, now: float) -> None:
        """Start the worker the supervisor owes: a reload check, credentials, or the due step."""
        if self.reload:
            self.reload = False
            self.notifier.reloading()
            self.worker = self.spawn("check", {"previous": self.text}, locked=False)
            if self.worker is None:
                self.notifier.ready(self.status)
        elif self.waiters:
            self.worker = self.spawn("credentials", {"config": self.text}, locked=True)
            if self.worker is None:
                self.finish_unstarted("credentials")
        elif self.checkers:
            self.worker = self.spawn("license", {"config": self.text}, locked=True)
            if self.worker is None:
                self.finish_unstarted("license")
        elif now >= self.next_step:
            self.worker = self.spawn("step", {"config": self.text}, locked=True)
            if self.worker is None:
                self.finish_unstarted("step")

    def finish_unstarted(self, mode: str) -> None:
        w = Worker(mode, 0, -1, 0.0)
        w.eof, w.code = True, 1
        self.finish(w)

    def timeout(self, now: float, next_ping: float | None) -> float | None:
        """Return how long the one wait may block: until the next timer of any kind (None: no timer)."""
        due: list[float] = []
        if next_ping is not None:
            due.append(next_ping)
        if self.worker is not None:
            w = self.worker
            if not w.killed:  # after SIGKILL only its SIGCHLD is awaited
                t = w.term_at + KILL_GRACE if w.term_at is not None else w.deadline
                due.append(t if self.stop_at is None else min(t, self.stop_at))
        elif not self.stop:
            due.append(self.next_step)
        elif self.stop_at is not None:
            due.append(self.stop_at)
        if self.apt_due is not None:
            due.append(self.apt_due)
        due += [c.deadline for c in self.conns]
        return max(0.0, min(due) - now) if due else None

    def on_ready(self, what: object) -> None:
        if what == "signal":
            with contextlib.suppress(OSError):
                while os.read(self._sig_r, 512):
                    pass
        elif what == "worker" and self.worker is not None:
            self.read_worker(self.worker)
            if self.worker.eof:
                self.reap()
        elif what == "control" and self.control is not None:
            conn = self.control.accept(clock())
            if conn is not None:
                self.conns.append(conn)
                self.sel.register(conn.sock, selectors.EVENT_READ, ("conn", conn))
        elif isinstance(what, tuple):
            conn = what[1]
            if conn.read():
                self.sel.unregister(conn.sock)
                self.conns.remove(conn)
                if conn.request is None:
                    conn.close()
                else:
                    self.on_request(conn)

    def expire_conns(self) -> None:
        now = clock()
        for conn in [c for c in self.conns if now >= c.deadline]:
            self.sel.unregister(conn.sock)
            self.conns.remove(conn)
            conn.close()


def spool_depth(state_dir: Path) -> int:
    """Return how many messages wait in the spool (counts the files)."""
    try:
        return sum(1 for name in os.listdir(state_dir / "spool" / "new") if name.endswith(".json"))
    except OSError:
        return 0


def run(config_path: Path, *, stop_deadline: float = STOP_DEADLINE, worker_deadline: float | None = None,
        step_backoff: float = STEP_BACKOFF_BASE) -> int:
    """Run the supervisor on the config file at config_path; return the exit code."""
    try:
        return Supervisor(config_path, stop_deadline=stop_deadline, worker_deadline=worker_deadline,
                          step_backoff=step_backoff).run()
    except StateError as exc:
        print(f"fluxagent: {exc.code} error: {exc}", file=sys.stderr)
        return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    """`python -m fluxagent.daemon.supervisor --config PATH [--stop-deadline S] [--worker-deadline S]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts: dict[str, str] = {}
    while args:
        name = args.pop(0)
        if name not in ("--config", "--stop-deadline", "--worker-deadline", "--step-backoff") or not args:
            print(f"usage: {USAGE}", file=sys.stderr)
            return EXIT_USAGE
        opts[name] = args.pop(0)
    if "--config" not in opts:
        print("--config PATH is required", file=sys.stderr)
        return EXIT_USAGE
    worker = opts.get("--worker-deadline")
    return run(Path(opts["--config"]), stop_deadline=float(opts.get("--stop-deadline", STOP_DEADLINE)),
               worker_deadline=float(worker) if worker is not None else None,
               step_backoff=float(opts.get("--step-backoff", STEP_BACKOFF_BASE)))


if __name__ == "__main__":
    sys.exit(main())
