"""Vendor-side helper: issue signed license files (as the vendor's backend does)."""

from __future__ import annotations

import nacl.signing

from fluxagent.wire import envelope


def make_license(
    vendor_key: nacl.signing.SigningKey,
    *,
    license_id: str,
    bound_domain: str,
    issued_at: int,
    expires_at: int,
    servers: int = 500,
    networks: int = 100,
) -> bytes:
    """Return the bytes of a license file (DSSE envelope) signed by vendor_key."""
    payload = envelope.canonical_json(
        {
            "license_id": license_id,
            "bound_domain": bound_domain,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "allocations": {"servers": servers, "networks": networks},
        }
    )
    return envelope.sign_envelope(envelope.LICENSE_FILE_TYPE, payload, vendor_key) + b"\n"
