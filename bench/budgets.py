"""Budget rows of the benchmark scripts: what `--json` prints, and what bench/run_all.py tabulates."""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Budget:
    """One budget measured: the figure, what it was measured against, the ratio, the limit, the verdict."""

    name: str
    figure: str
    reference: str
    ratio: float | None
    limit: str
    ok: bool


def emit(rows: list[Budget], as_json: bool) -> None:
    """With as_json, print the rows as one JSON line (the last line of the script's output)."""
    if as_json:
        print(json.dumps([asdict(r) for r in rows]), flush=True)


def parse(stdout: str) -> list[Budget]:
    """Return the rows of a script's `--json` output (its last non-empty line); raises ValueError."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    return [Budget(**row) for row in json.loads(lines[-1])]


def as_installed() -> None:
    """Byte-compile the fluxagent package, as the Debian package's postinst and `pip install` do.

    The figures are those of the installed agent, and the import floor's libraries come compiled
    already; with PYTHONDONTWRITEBYTECODE set (as in the unit) a source checkout would otherwise
    compile every module again in each measured process (~70 ms).
    """
    import fluxagent

    compileall.compile_dir(Path(fluxagent.__file__).parent, quiet=1, workers=0)


# Forks and execs cmd, waits, writes "wall maxrss_kib exitcode" to argv[1]. A child's ru_maxrss
# counts the memory it had before exec, i.e. its parent's at fork time: measured straight from a
# bench process holding a database or a server, a small command would show the bench's size. This
# launcher is a bare interpreter (~10 MiB), so what it reports is the command's own peak.
_LAUNCHER = """
import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_pid, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as f:
    f.write(f"{wall} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(cmd: list[str], stdout: str | os.PathLike[str] | None = None) -> tuple[float, float, int]:
    """Run cmd with stdout to a file (or nowhere); return (wall seconds, its own peak RSS in MB, exit code).

    The bench's own writes are flushed first, so a command that fsyncs does not pay for them.
    """
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".measure") as report, open(stdout or os.devnull, "wb") as sink:
        subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, report.name, *cmd],
                       stdout=sink, stderr=subprocess.DEVNULL, check=False)
        wall, kib, code = report.read().split()
    return float(wall), int(kib) * 1024 / 1_000_000, int(code)
