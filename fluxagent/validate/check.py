"""One validate check (`Check`), its constructors and the exit code of a list of checks."""

from __future__ import annotations

from dataclasses import dataclass

from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_IOERR, EXIT_OK, EXIT_UNAVAILABLE

LEVELS = ("ok", "warn", "fail", "skip")


@dataclass(frozen=True)
class Check:
    """One line of the checklist: name, level, reason, how to fix it, and a failure's exit code."""

    name: str
    level: str
    reason: str
    fix: str = ""
    exit_code: int = EXIT_OK

    def as_dict(self) -> dict[str, object]:
        """Return the JSON form of this check."""
        return {"name": self.name, "level": self.level, "reason": self.reason, "fix": self.fix,
                "exit_code": self.exit_code}


def ok(name: str, reason: str) -> Check:
    """Return a passing check."""
    return Check(name, "ok", reason)


def fail(name: str, reason: str, fix: str, code: int = EXIT_CHECK_FAILED) -> Check:
    """Return a failed check with its exit code."""
    return Check(name, "fail", reason, fix, code)


def exit_code(checks: list[Check]) -> int:
    """Return validate's exit code: 78 config/identity, else 74 disk, else 1 any check, else 69 unreachable, else 0."""
    codes = {c.exit_code for c in checks if c.level == "fail"}
    for code in (EXIT_CONFIG, EXIT_IOERR, EXIT_CHECK_FAILED, EXIT_UNAVAILABLE):
        if code in codes:
            return code
    return EXIT_OK
