"""Helpers for the packaging tests: where the packaging files are, and how to require a system tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "fluxagent.service"


def require_tool(name: str) -> str:
    """Return the path of a system tool; skip (visibly) without it, but fail in CI, which installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; CI must install it (.ci/run)")
        pytest.skip(f"{name} is not installed on this machine")
    return path


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Return every Key=value of a unit file, in order, by key (repeatable keys keep each value)."""
    out: dict[str, list[str]] = {}
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def run(*cmd: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload, no-any-return]
