"""Log lines in the one format every fluxagent process writes: JSON (with journald `<N>` priority
prefixes) or console text, secrets redacted before anything is rendered (docs/ARCHITECTURE.md).

Standard library only: the resident supervisor logs through `Logger` here, and the worker's
structlog renders through the same functions (logs.py), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
import time

TYPE_CHECKING = False  # typing itself is not imported at run time: the supervisor stays small
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, MutableMapping
    from typing import Any, TextIO

SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|private|signing_key|digest_key|authorization|cookie|credential)", re.I
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
LEVEL_ENV = "FLUXAGENT_LOG_LEVEL"  # set by the global -v/--verbose and -q/--quiet options
_LEVEL_WIDTH = 9  # the console pads the level to the longest name structlog knows ("exception")
_EVENT_WIDTH = 30


def redact_text(text: str) -> str:
    """Return text with passwords inside URLs replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact(event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask, in place, values of secret-looking keys and passwords inside URLs; return event."""
    for key in list(event):
        value = event[key]
        if key != "event" and SECRET_KEY.search(key):
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = redact_text(value)
    return event


def timestamp(now: float | None = None) -> str:
    """Return now (default: the wall clock) as ISO 8601 UTC with microseconds, "…T12:00:00.123456Z"."""
    t = time.time() if now is None else now
    secs = int(t)
    micros = round((t - secs) * 1_000_000)
    if micros == 1_000_000:
        secs, micros = secs + 1, 0
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{base}.{micros:06d}Z" if micros else f"{base}Z"  # as datetime.isoformat() writes it


def render_json(event: Mapping[str, Any]) -> str:
    """Return event as one JSON line (sorted keys; values JSON cannot hold become strings)."""
    return json.dumps(event, default=str, sort_keys=True)


def render_journald(event: Mapping[str, Any]) -> str:
    """Return event as JSON with the syslog priority prefix journald reads (`<6>{…}`)."""
    return f"<{PRIORITY.get(str(event.get('level')), 6)}>" + render_json(event)


def render_console(event: Mapping[str, Any]) -> str:
    """Return event for people: timestamp, [level], event name, then key=value pairs sorted by key."""
    rest = dict(event)
    head = []
    ts = rest.pop("timestamp", None)
    level = rest.pop("level", None)
    name = str(rest.pop("event", ""))
    if ts is not None:
        head.append(str(ts))
    if level is not None:
        head.append(f"[{level!s:<{_LEVEL_WIDTH}}]")
    pairs = " ".join(f"{k}={v!r}" for k, v in sorted(rest.items()))
    head.append(f"{name:<{_EVENT_WIDTH}} {pairs}" if pairs else name)
    return " ".join(head)


def renderer(fmt: str, isatty: bool, env: Mapping[str, str]) -> Callable[[Mapping[str, Any]], str]:
    """Return the renderer of a `log.format` value: console on a TTY for "auto", JSON otherwise,
    with `<N>` prefixes when journald reads the stream (JOURNAL_STREAM is set)."""
    if fmt == "auto":
        fmt = "console" if isatty else "json"
    if fmt == "console":
        return render_console
    return render_journald if env.get("JOURNAL_STREAM") else render_json


class Logger:
    """The supervisor's logger: the same events, keys and lines as the structlog set-up of logs.py."""

    def __init__(self, stream: TextIO, fmt: str = "auto", level: str = "info",
                 env: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.configure(fmt, level, env or {})

    def configure(self, fmt: str, level: str, env: Mapping[str, str]) -> None:
        """Take a (reloaded) `[log]` format and level; FLUXAGENT_LOG_LEVEL (-v/-q) wins over level."""
        override = env.get(LEVEL_ENV, "").strip().lower()
        level = override if override in LEVELS else level
        try:
            tty = self.stream.isatty()
        except (OSError, ValueError):
            tty = False
        self.render = renderer(fmt, tty, env)
        self.threshold = LEVELS.get(level, LEVELS["info"])

    def log(self, level: str, event: str, **kw: Any) -> None:
        """Write one event at level; a log stream that fails is never the process's end."""
        if LEVELS.get(level, 0) < self.threshold:
            return
        line = self.render(redact({"event": event, **kw, "level": level, "timestamp": timestamp()}))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, event: str, **kw: Any) -> None:
        self.log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self.log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self.log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self.log("error", event, **kw)
