"""Structured logging: events, not sentences; JSON (with <N> priority prefixes under journald)
or console; secrets redacted before anything is rendered (docs/ARCHITECTURE.md, "Logs are events")."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
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

from fluxagent import logfmt  # noqa: E402
from fluxagent.logfmt import PRIORITY, redact_text  # noqa: E402

__all__ = ["PRIORITY", "configure", "current_stream", "get", "redact", "redact_text"]

_stream: list[TextIO] = []
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# set by the global -v/--verbose (debug) and -q/--quiet (warning) options; wins over log.level
LEVEL_ENV = "FLUXAGENT_LOG_LEVEL"


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask values of secret-looking keys and passwords in URLs."""
    return logfmt.redact(event)


def _as_processor(render: Callable[[Mapping[str, Any]], str]) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    def processor(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
        return render(event)
    return processor


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None,
              env: MutableMapping[str, str] | None = None) -> None:
    """Set up structlog: console on a TTY, JSON otherwise; `<N>` prefixes when JOURNAL_STREAM is set.

    The lines are rendered by logfmt, as the supervisor's are: one format for every process.
    FLUXAGENT_LOG_LEVEL (set by -v/-q) overrides level.
    """
    out = stream or sys.stdout
    _stream[:] = [out]
    env = os.environ if env is None else env
    override = env.get(LEVEL_ENV, "").strip().lower()
    level = override if override in LEVELS else level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            _as_processor(logfmt.renderer(fmt, out.isatty(), env)),
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
