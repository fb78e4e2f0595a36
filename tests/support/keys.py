"""Vendor signing keys for the tests: the reference server signs with them, configs pin their public halves."""

from __future__ import annotations

import nacl.signing


def vendor_keys(n: int = 2) -> list[nacl.signing.SigningKey]:
    """Return n fresh Ed25519 vendor keys (two by default: the current one and the next, for rotation)."""
    return [nacl.signing.SigningKey.generate() for _ in range(n)]
