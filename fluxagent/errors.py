"""One error tree: each error has a stable code, a message for people and an exit code.

The exit codes are listed in docs/OPERATOR.md, "Commands".
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_IOERR = 74
EXIT_LOCKED = 75
EXIT_CONFIG = 78


def oserror_exit_code(exc: OSError) -> int:
    """Return the exit code of an OSError on a file fluxagent owns: 78 for a permission problem or a link
    where a file belongs (a person fixes those), else 74 (a disk or I/O error: a restart may succeed)."""
    return EXIT_CONFIG if isinstance(exc, PermissionError) or exc.errno == errno.ELOOP else EXIT_IOERR


class FluxError(Exception):
    """Base of every error fluxagent reports to people; carries code, message, hint and exit code."""

    code = "error"
    exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(FluxError):
    """One or more configuration problems; `problems` holds each as "file: path: what"."""

    code = "config"
    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"configuration has {n} problem{'s' if n != 1 else ''}:\n{lines}", hint=hint)


class IdentityError(FluxError):
    code = "identity"
    exit_code = EXIT_CONFIG


class StateError(FluxError):
    """A state file cannot be read or written, or is corrupt, and cannot be recovered automatically.

    Raised `from` the OSError when there is one: a disk or state I/O error (full, read-only, EIO) is
    74, which systemd restarts once the disk is fixed; a permission error (EACCES/EPERM) or corrupt
    content is a problem a person must fix: 78, like configuration errors.
    """

    code = "state"
    _exit_override: int | None = None

    @property
    def exit_code(self) -> int:
        if self._exit_override is not None:
            return self._exit_override
        cause = self.__cause__
        return oserror_exit_code(cause) if isinstance(cause, OSError) else EXIT_CONFIG

    @exit_code.setter
    def exit_code(self, value: int) -> None:
        self._exit_override = value


class StateDirUnsafe(FluxError):
    """The state directory belongs to another user or others may write to it: refused, never repaired."""

    code = "state_dir"
    exit_code = EXIT_CONFIG


class SourceError(FluxError):
    """The platform database or this host could not provide a fact."""

    code = "source"
    exit_code = EXIT_CHECK_FAILED


class AllowlistError(FluxError):
    """A payload holds a key path or value the allowlist registry does not permit."""

    code = "allowlist"
    exit_code = EXIT_CHECK_FAILED


class EnvelopeError(FluxError):
    """A DSSE envelope is malformed or its signature does not verify."""

    code = "envelope"
    exit_code = EXIT_CHECK_FAILED


class SchemaHeld(FluxError):
    """A kind needs a field the approved schema version does not allow: it waits for an approval."""

    code = "schema"
    exit_code = EXIT_CHECK_FAILED


class ServerUnavailable(FluxError):
    code = "unavailable"
    exit_code = EXIT_UNAVAILABLE


class LockHeld(FluxError):
    code = "locked"
    exit_code = EXIT_LOCKED


# ---- platform database failures: distinct codes, so operators and the daemon can tell them apart ----


class SourceUnreachable(SourceError):
    """The platform database server did not answer (refused, timed out, unknown host)."""

    code = "db_unreachable"
    exit_code = EXIT_UNAVAILABLE


class SourceAuthFailed(SourceError):
    """The platform database refused the credentials."""

    code = "db_auth"
    exit_code = EXIT_CONFIG


class SourceDatabaseMissing(SourceError):
    """The server answered, but the configured database (or SQLite file) does not exist."""

    code = "db_missing"
    exit_code = EXIT_CONFIG


class SourceConfigError(SourceError):
    """The platform settings cannot be used: missing driver extra, unsafe password file, bad URL."""

    code = "db_config"
    exit_code = EXIT_CONFIG


class SourceQueryFailed(SourceError):
    """A platform query failed on the server (syntax, missing table, statement timeout)."""

    code = "db_query"
    exit_code = EXIT_CHECK_FAILED


class SourceShapeError(SourceError):
    """A platform query returned the wrong shape: not one non-negative integer, or the wrong columns."""

    code = "db_shape"
    exit_code = EXIT_CHECK_FAILED


class SourceWriteRefused(SourceError):
    """A platform query tried to write; the read-only transaction refused it."""

    code = "db_write_refused"
    exit_code = EXIT_CHECK_FAILED
