"""Structured logging: events, not sentences; JSON (with <N> priority prefixes under journald)
or console; secrets redacted before anything is rendered (docs/ARCHITECTURE.md, "Logs are events")."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO


def _import_structlog_without_rich() -> Any:
    """Import structlog as if rich were not installed, and leave rich importable for everyone else.

    structlog.dev imports rich, when installed, only to draw tracebacks on a console; the agent never
    asks for that, and rich holds ~5 MB of resident memory in a process that runs for months.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        import structlog as already

        return already
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog as fresh
    finally:
        del sys.modules["rich"]
    return fresh


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog_without_rich()

_SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|private|signing_key|digest_key|authorization|cookie|credential)", re.I
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_stream: list[TextIO] = []
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# set by the global -v/--verbose (debug) and -q/--quiet (warning) options; wins over log.level
LEVEL_ENV = "FLUXAGENT_LOG_LEVEL"


def redact_text(text: str) -> str:
    """Return text with passwords inside URLs replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask values of secret-looking keys and passwords in URLs."""
    for key in list(event):
        value = event[key]
        if key != "event" and _SECRET_KEY.search(key):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


def _journald_json(_logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    level = str(event.get("level", method))
    return f"<{PRIORITY.get(level, 6)}>" + json.dumps(event, default=str, sort_keys=True)


def _plain_json(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    return json.dumps(event, default=str, sort_keys=True)


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
              env: MutableMapping[str, str] | None = None) -> None:
    """Set up structlog: console on a TTY, JSON otherwise; `<N>` prefixes when JOURNAL_STREAM is set.

    FLUXAGENT_LOG_LEVEL (set by -v/-q) overrides level.
    """
    out = stream or sys.stdout
    _stream[:] = [out]
    env = os.environ if env is None else env
    override = env.get(LEVEL_ENV, "").strip().lower()
    level = override if override in LEVELS else level
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    elif env.get("JOURNAL_STREAM"):
        renderer = _journald_json
    else:
        renderer = _plain_json
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get(name: str = "fluxagent") -> Any:
    """Return a bound structlog logger."""
    return structlog.get_logger(name)


def debug(event: str, **kw: Any) -> None:
    """Log a debug event, only once configure() ran (a library caller, or `preview`, gets no log lines)."""
    if _stream:
        get().debug(event, **kw)


def current_stream() -> TextIO | None:
    """Return the stream the last configure() chose (None before the first), for a reload."""
    return _stream[0] if _stream else None
