"""The vocabulary, said once: message kinds, the scheduled ones, their endpoints, license states."""

from __future__ import annotations

from typing import Final

KINDS: Final = ("license", "heartbeat", "digest", "credentials")
"""Every message kind the agent can send (clause 08 items; `credentials` is sent on demand)."""

SCHEDULED: Final = ("license", "heartbeat", "digest")
"""The kinds sent on their own timers."""

ENDPOINTS: Final = {
    "license": "/v1/license",
    "heartbeat": "/v1/heartbeat",
    "digest": "/v1/digest",
    "credentials": "/v1/update-credentials",
}
KIND_BY_ENDPOINT: Final = {path: kind for kind, path in ENDPOINTS.items()}

LICENSE_STATES: Final = ("valid", "offline", "grace", "expired", "revoked", "invalid", "unlicensed")
"""Every license state the agent derives and reports (docs/PROTOCOL.md, the license state machine)."""

RECEIPT_STATES: Final = ("valid", "grace", "expired", "revoked", "invalid", "unlicensed")
"""The license states a server receipt may assert (`offline` is only ever derived locally)."""
