"""Text renderings for people (pure: values in, strings out); cli.py prints them."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from fluxagent.identifiers import TokenList
from fluxagent.wire.messages import REGISTRY, Sealed

if TYPE_CHECKING:
    from fluxagent.schema.policy import Policy

_ITEMS = {(f.kind, f.path): f.item for f in REGISTRY}


_KIND_ITEM = {
    "license": "License validation",
    "heartbeat": "Heartbeat metrics",
    "digest": "Infrastructure digest",
    "credentials": "Update delivery",
}
_ORDER = {"v": 0, "aud": 1, "iid": 2, "seq": 3, "ts": 4, "nonce": 5}


def _item(kind: str, path: str) -> str:
    if path == "body":
        return _KIND_ITEM[kind]
    if path.startswith("body."):
        return _ITEMS.get((kind, path[5:]), "NOT IN ALLOWLIST")
    return _ITEMS.get(("*", path), "NOT IN ALLOWLIST")


def _leaves(obj: dict[str, Any], base: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key in sorted(obj, key=lambda k: (_ORDER.get(k, 9), k)):
        value, path = obj[key], f"{base}{key}"
        if isinstance(value, dict) and value:
            out.extend(_leaves(value, f"{path}."))
        else:
            out.append((path, value))
    return out


def _show(value: Any) -> str:
    if isinstance(value, list | TokenList):
        if not len(value):
            return "[] (empty)"
        first = [t.hex() if isinstance(t, bytes) else str(t) for t in itertools.islice(value, 2)]
        return (
            f"{len(value)} tokens: "
            + ", ".join(v[:12] + "…" for v in first)
            + (", …" if len(value) > 2 else "")
        )
    if isinstance(value, dict):
        return "{} (empty: the signed envelope is the request)"
    return json.dumps(value, ensure_ascii=False)


def pending_note(policy: Policy) -> str:
    """Return the line saying a wider schema version awaits approval ("" when none does)."""
    if not policy.pending:
        return ""
    return (f"schema: running {policy.running.name} is wider than the approved {policy.approved.name}: "
            f"{len(policy.withheld)} field(s) are WITHHELD until approved (`fluxagent schema --diff`, "
            "`sudo fluxagent schema --approve`)")


def preview_text(sealed: list[Sealed], server_url: str, *, withheld: Mapping[str, tuple[str, ...]] | None = None,
                 policy: Policy | None = None) -> str:
    """Return the human preview: per message its endpoint, every field with value and clause 08 item.

    withheld: per kind, the body paths left out because the approved schema version does not allow
    them; policy: the running and approved versions (a pending approval is said at the top).
    """
    blocks = [pending_note(policy)] if policy is not None and policy.pending else []
    for s in sealed:
        rows = [(p, _show(v), _item(s.kind, p)) for p, v in _leaves(s.obj)]
        w0 = max(len(r[0]) for r in rows)
        w1 = min(max(len(r[1]) for r in rows), 60)
        lines = [
            f"{s.kind}  →  POST {server_url}{s.endpoint}",
            f"  payload {s.payload_size} bytes, sha256 {s.payload_sha256}; envelope {s.envelope_size} bytes",
            f"  {'field':<{w0}}  {'value':<{w1}}  clause 08 item",
        ]
        for path, shown, item in rows:
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"  {path:<{w0}}  {shown:<{w1}}  {item}")
        for path in (withheld or {}).get(s.kind, ()):
            lines.append(f"  {path:<{w0}}  {'(WITHHELD: not in the approved schema)':<{w1}}  not sent")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def preview_json(sealed: list[Sealed], server_url: str, *, withheld: Mapping[str, tuple[str, ...]] | None = None,
                 policy: Policy | None = None) -> Iterator[bytes]:
    """Yield the `preview --json` document in pieces: one object per message (docs/OPERATOR.md, "Commands").

    Each object also says which body paths were withheld and whether a wider schema awaits approval.

    A streamed digest's payload is shown as its exact (compact) payload text, and every envelope
    is produced piece by piece, so the document is never whole in memory.
    """
    yield b"["
    for i, s in enumerate(sealed):
        doc = {
            "kind": s.kind,
            "endpoint": s.endpoint,
            "url": f"{server_url}{s.endpoint}",
            "payload": _PAYLOAD if s.streamed else s.obj,
            "payload_sha256": s.payload_sha256,
            "envelope": _ENVELOPE,
            "withheld": list((withheld or {}).get(s.kind, ())),
            "schema_pending": bool(policy is not None and policy.pending),
        }
        text = json.dumps(doc, indent=2, ensure_ascii=False).replace("\n", "\n  ")
        yield (b"," if i else b"") + b"\n  "
        for part in _SPLIT.split(text):
            if part == f'"{_PAYLOAD}"' and s.streamed:
                yield from s.streamed.payload_chunks()
            elif part == f'"{_ENVELOPE}"':
                yield b'"'
                for chunk in s.envelope_chunks():  # envelope text holds no backslash: quotes are all to escape
                    yield chunk.replace(b'"', b'\\"')
                yield b'"'
            else:
                yield part.encode()
    yield b"\n]\n"


_PAYLOAD = "@@fluxagent-payload@@"
_ENVELOPE = "@@fluxagent-envelope@@"
_SPLIT = re.compile(f'("{_PAYLOAD}"|"{_ENVELOPE}")')
