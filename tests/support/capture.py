"""The one log capture of the tests: a structlog-shaped recorder the code under test is given.

`Events` stands in for the logger an Engine or Agent is handed (any level method records the call);
`LogCapture` configures fluxagent's real logging into a buffer, for tests about what is rendered
(JSON, redaction), and parses it back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from fluxagent import logs


class Events:
    """Records every (level, event, fields) logged through it, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        if level.startswith("_"):
            raise AttributeError(level)
        return lambda event, **kw: self.seen.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        """Return the fields of every event of this name, oldest first."""
        return [kw for _, e, kw in self.seen if e == event]

    def names(self) -> list[str]:
        """Return the event names in the order they were logged."""
        return [e for _, e, _ in self.seen]


class LogCapture:
    """fluxagent's logging configured to JSON into a buffer; `events()` parses what was rendered."""

    def __init__(self, level: str = "info") -> None:
        self.buf = io.StringIO()
        logs.configure("json", level, stream=self.buf, env={})

    def events(self, name: str | None = None, level: str | None = None) -> list[dict[str, Any]]:
        """Return the rendered events, optionally only those of one name and/or level."""
        out = [json.loads(line) for line in self.buf.getvalue().splitlines() if line.strip()]
        return [e for e in out if (name is None or e["event"] == name) and (level is None or e["level"] == level)]
