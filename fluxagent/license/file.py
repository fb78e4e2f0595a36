"""The license file: a DSSE envelope signed by a vendor key, checked offline (docs/PROTOCOL.md §5).

Each failure has its own `code` and a message that says what is wrong and where to look, so
`validate`, `status` and license-status.json can tell an operator exactly what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fluxagent.errors import EnvelopeError
from fluxagent.identifiers import canonical_hostname
from fluxagent.wire import envelope
from fluxagent.wire.messages import LICENSE_ID_SHAPE, is_license_id

MAX_LICENSE_BYTES = 256 * 1024
ISSUED_AHEAD_TOLERANCE = 300  # seconds a license may look issued in the future (clock drift)
ALLOCATION_KEYS = ("servers", "networks")
LEGACY_UNTIL_TEXT = "2027-07-01"  # envelope.LEGACY_LICENSE_FILES_UNTIL, for people


@dataclass(frozen=True)
class LicenseFile:
    """What the local license file says: a state, the license id, and the reason for a bad state."""

    state: str  # valid | expired | invalid | unlicensed
    license_id: str | None
    reason: str
    expires_at: int | None = None
    issued_at: int | None = None
    allocations: dict[str, int] | None = None
    code: str = "ok"  # ok | missing | unreadable | too_large | no_keys | signature | payload | domain |
    #                   dates | not_yet_valid | allocations | expired


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad(code: str, reason: str, lid: str | None = None) -> LicenseFile:
    return LicenseFile("invalid", lid, reason, code=code)


def check_license(data: bytes | None, vendor_keys: tuple[bytes, ...], bound_domain: str, now: float) -> LicenseFile:
    """Return the verdict on license file bytes (None: no file) for bound_domain at time now. Pure."""
    if data is None:
        return LicenseFile("unlicensed", None, "no license file", code="missing")
    if len(data) > MAX_LICENSE_BYTES:
        return _bad("too_large", f"license file is larger than {MAX_LICENSE_BYTES} bytes: not a license")
    if not vendor_keys:
        return _bad("no_keys", "server.vendor_keys is empty: the license cannot be verified")
    try:
        ptype = envelope.parse_envelope(data)[0]
        legacy = ptype == envelope.LICENSE_TYPE  # a file issued before license files had their own type
        opened = envelope.open_envelope(data, vendor_keys, ptype if legacy else envelope.LICENSE_FILE_TYPE)
    except EnvelopeError as exc:
        return _bad("signature", f"license signature: {exc.message}")
    p: dict[str, Any] = opened.obj
    lid, dom, issued, expires = p.get("license_id"), p.get("bound_domain"), p.get("issued_at"), p.get("expires_at")
    if legacy and not (isinstance(issued, int) and issued < envelope.LEGACY_LICENSE_FILES_UNTIL):
        return _bad("signature", f"license file has the license message's payload type {ptype!r}, accepted only"
                    f" for files issued before {LEGACY_UNTIL_TEXT}: ask the vendor for a file of type"
                    f" {envelope.LICENSE_FILE_TYPE!r}")
    if not isinstance(lid, str) or not lid:
        return _bad("payload", "license payload lacks a license_id")
    if not is_license_id(lid):  # the license message could not carry it: refuse it here, not at seal time
        return _bad("payload", f"license_id is not a license id ({len(lid)} characters; expected {LICENSE_ID_SHAPE})")
    if not isinstance(dom, str) or canonical_hostname(dom) is None:
        return _bad("payload", f"license bound_domain {str(dom)[:80]!r} is not a valid host name", lid)
    if canonical_hostname(dom) != canonical_hostname(bound_domain):
        return _bad("domain", f"license is bound to {dom!r}, this instance to {bound_domain!r}"
                    " (instance.bound_domain)", lid)
    if not (_int(issued) and _int(expires)):
        return _bad("dates", "license payload lacks integer issued_at/expires_at", lid)
    assert isinstance(issued, int) and isinstance(expires, int)
    if expires <= issued:
        return _bad("dates", f"license expires_at ({expires}) is not after issued_at ({issued})", lid)
    alloc = p.get("allocations")
    if not (isinstance(alloc, dict) and all(k in alloc for k in ALLOCATION_KEYS)
            and all(_int(v) and v >= 0 for v in alloc.values())):
        return _bad("allocations", "license allocations must give non-negative integers for "
                    + " and ".join(ALLOCATION_KEYS), lid)
    allocations = {str(k): int(v) for k, v in alloc.items()}
    if issued > now + ISSUED_AHEAD_TOLERANCE:
        return LicenseFile("invalid", lid, f"license issued_at lies {int(issued - now)} s in the future"
                           " (check the clock)", expires, issued, allocations, code="not_yet_valid")
    if expires <= now:
        return LicenseFile("expired", lid, f"license expired {int(now - expires)} s ago", expires, issued,
                           allocations, code="expired")
    return LicenseFile("valid", lid, "license file verified", expires, issued, allocations)


