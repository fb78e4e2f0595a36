"""Registry versions as values: canonical form, fingerprint, JSON file form, and the difference of two.

The fingerprint covers what an operator approves — each field's kind, path, type and clause 08
item — and not the human-readable meaning, so a wording fix needs no new approval.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fluxagent.kinds import KINDS
from fluxagent.wire.messages import TYPES, Field

FORMAT = "fluxagent-registry"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_REF = re.compile(r"^v?([0-9]{1,4})$")


def canonical_bytes(fields: Iterable[Field]) -> bytes:
    """Return the canonical form of fields: sorted [kind, path, type, item] rows as compact JSON."""
    rows = sorted({f.canonical for f in fields})
    return json.dumps({"format": FORMAT, "fields": rows}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def fingerprint_of(fields: Iterable[Field]) -> str:
    """Return `sha256:<hex>` over the canonical form of fields."""
    return "sha256:" + hashlib.sha256(canonical_bytes(fields)).hexdigest()


def is_fingerprint(text: str) -> bool:
    """True when text looks like a fingerprint (`sha256:` and 64 lowercase hex digits)."""
    return bool(_FINGERPRINT.match(text))


@dataclass(frozen=True)
class Version:
    """One numbered version of the allowlist registry."""

    number: int
    fields: tuple[Field, ...]

    @property
    def name(self) -> str:
        return f"v{self.number}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.fields)

    def allows(self, f: Field) -> bool:
        """True when this version lists f with the same kind, path, type and clause 08 item."""
        return f.canonical in self.canonical_set

    @property
    def canonical_set(self) -> frozenset[tuple[str, str, str, str]]:
        return frozenset(f.canonical for f in self.fields)

    def to_json(self) -> bytes:
        """Return the committed file form: number, fingerprint and every field with its meaning."""
        doc = {
            "format": FORMAT,
            "version": self.number,
            "fingerprint": self.fingerprint,
            "fields": [
                {"kind": f.kind, "path": f.path, "type": f.type, "item": f.item, "meaning": f.meaning,
                 **({"required": True} if f.required else {})}
                for f in self.fields
            ],
        }
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def version_from_json(data: bytes, where: str) -> Version:
    """Return the Version of a file's bytes; raises ValueError naming where and what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{where}: not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{where}: not a {FORMAT} file")
    number, rows = doc.get("version"), doc.get("fields")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1 or not isinstance(rows, list):
        raise ValueError(f"{where}: needs a positive `version` and a `fields` list")
    fields = tuple(_field(row, f"{where}: fields[{i}]") for i, row in enumerate(rows))
    v = Version(number, fields)
    if doc.get("fingerprint") != v.fingerprint:
        raise ValueError(f"{where}: stored fingerprint {doc.get('fingerprint')!r} is not {v.fingerprint}")
    return v


def _field(row: Any, where: str) -> Field:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not an object")
    text = {k: v for k in ("kind", "path", "type", "item", "meaning") if isinstance(v := row.get(k), str) and v}
    if len(text) != 5:
        raise ValueError(f"{where}: kind, path, type, item and meaning must be non-empty strings")
    if text["kind"] not in (*KINDS, "*") or text["type"] not in TYPES:
        raise ValueError(f"{where}: unknown kind {text['kind']!r} or type {text['type']!r}")
    return Field(text["kind"], text["path"], text["type"], text["item"], text["meaning"],
                 required=row.get("required") is True)


@dataclass(frozen=True)
class Catalog:
    """Every registry version the package knows, oldest first; the newest is the one running."""

    versions: tuple[Version, ...]

    def __post_init__(self) -> None:
        numbers = [v.number for v in self.versions]
        if not numbers or numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"registry versions must be numbered 1..n without gaps, got {numbers}")

    @property
    def newest(self) -> Version:
        return self.versions[-1]

    def find(self, ref: str) -> Version | None:
        """Return the version a reference names (`v2`, `2` or its fingerprint), or None."""
        ref = ref.strip()
        m = _REF.match(ref)
        for v in self.versions:
            if (m and v.number == int(m.group(1))) or v.fingerprint == ref:
                return v
        return None


@dataclass(frozen=True)
class Diff:
    """What version b sends that a does not (added), and what a sent that b no longer does (removed)."""

    a: Version
    b: Version
    added: tuple[Field, ...]
    removed: tuple[Field, ...]

    @property
    def widens(self) -> bool:
        return bool(self.added)


def diff(a: Version, b: Version) -> Diff:
    """Return the field-by-field difference from a to b (a changed type or item is removed + added)."""
    return Diff(a, b, tuple(f for f in b.fields if not a.allows(f)), tuple(f for f in a.fields if not b.allows(f)))
