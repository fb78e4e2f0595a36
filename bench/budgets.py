"""Budget rows of the benchmark scripts: what `--json` prints, and what bench/run_all.py tabulates."""

from __future__ import annotations

import compileall
import json
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
