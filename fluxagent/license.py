"""The license file: a DSSE envelope signed by a vendor key, checked offline (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxagent import envelope
from fluxagent.errors import EnvelopeError
from fluxagent.identifiers import canonical_hostname

MAX_LICENSE_BYTES = 256 * 1024


@dataclass(frozen=True)
class LicenseFile:
    """What the local license file says: a state, the license id, and the reason for a bad state."""

    state: str  # valid | expired | invalid | unlicensed
    license_id: str | None
    reason: str
    expires_at: int | None = None
    issued_at: int | None = None
    allocations: dict[str, int] | None = None


def check_license(data: bytes | None, vendor_keys: tuple[bytes, ...], bound_domain: str, now: float) -> LicenseFile:
    """Return the verdict on license file bytes (None: no file) for bound_domain at time now. Pure."""
    if data is None:
        return LicenseFile("unlicensed", None, "no license file")
    if not vendor_keys:
        return LicenseFile("invalid", None, "server.vendor_keys is empty: the license cannot be verified")
    try:
        opened = envelope.open_envelope(data, vendor_keys, envelope.LICENSE_TYPE)
    except EnvelopeError as exc:
        return LicenseFile("invalid", None, f"license signature: {exc.message}")
    p: dict[str, Any] = opened.obj
    lid, dom, issued, expires = p.get("license_id"), p.get("bound_domain"), p.get("issued_at"), p.get("expires_at")
    alloc = p.get("allocations")
    if not isinstance(lid, str) or not isinstance(dom, str):
        return LicenseFile("invalid", None, "license payload lacks license_id or bound_domain")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (issued, expires)):
        return LicenseFile("invalid", lid, "license payload lacks integer issued_at/expires_at")
    assert isinstance(issued, int) and isinstance(expires, int)
    allocations = None
    if isinstance(alloc, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in alloc.values()):
        allocations = {str(k): int(v) for k, v in alloc.items()}
    if canonical_hostname(dom) is None or canonical_hostname(dom) != canonical_hostname(bound_domain):
        return LicenseFile("invalid", lid, f"license is bound to {dom!r}, this instance to {bound_domain!r}")
    if issued > now + 300:
        return LicenseFile("invalid", lid, "license issued_at lies in the future (check the clock)", expires, issued)
    if expires <= now:
        return LicenseFile("expired", lid, "license expired", expires, issued, allocations)
    return LicenseFile("valid", lid, "license file verified", expires, issued, allocations)


def read_license_file(path: Path) -> bytes | None:
    """Return the license file bytes, or None when it does not exist; raises OSError otherwise."""
    try:
        with path.open("rb") as f:
            return f.read(MAX_LICENSE_BYTES + 1)
    except FileNotFoundError:
        return None
