"""HTTP answers as values: the response, transport errors and Retry-After parsing (pure; no sockets)."""

from __future__ import annotations

import datetime
import email.utils
import math
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from fluxagent.errors import EXIT_CONFIG, ServerUnavailable

# "connect", "dns" and "tls" fail before any byte of the request left the machine; every other kind
# (e.g. "broken": the connection reset while the answer was awaited) may follow a request the server got.
Kind = Literal["connect", "dns", "tls", "broken", "timeout", "deadline", "too_large", "redirect", "protocol"]
NOT_SENT_KINDS: tuple[Kind, ...] = ("connect", "dns", "tls")


class TransportError(ServerUnavailable):
    """A request that got no usable HTTP response; `kind` says why, the message names the URL."""

    def __init__(self, kind: Kind, url: str, detail: str, *, status: int | None = None, config: bool = False) -> None:
        super().__init__(f"{redact_url(url)}: {detail}")
        self.kind: Kind = kind
        self.url = url
        self.status = status
        # a problem of this machine's setup (server certificate not trusted by server.ca_bundle or the
        # system store), not of the network: exit 78, and the daemon says so once and retries slowly
        self.config = config
        if config:
            self.exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class HttpResponse:
    """A complete HTTP response: status, headers (lowercased names) and the decoded body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)  # may carry credentials; never in a repr

    def __repr__(self) -> str:
        return f"HttpResponse(status={self.status}, body=<{len(self.body)} bytes>)"


def redact_url(url: str) -> str:
    """Return url with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def parse_retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Return seconds to wait per Retry-After (seconds or HTTP date), capped; None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        # a huge digit string is just "a long time"; int() of >4300 digits would raise
        return min(float(int(text)), cap) if len(text) <= 12 else cap
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC without a claim about local time
        when = when.replace(tzinfo=datetime.UTC)
    wait = when.timestamp() - now
    if math.isnan(wait):
        return None
    return min(max(wait, 0.0), cap)
