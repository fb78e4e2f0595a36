"""`fluxagent schema` and `schema --diff` renderings: versions and approval in, text or JSON-ready dicts out (pure)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fluxagent.kinds import KINDS
from fluxagent.schema.policy import Approved, Policy
from fluxagent.schema.versions import Catalog, Diff, Version
from fluxagent.wire.messages import Field, registry_table

KIND_ORDER = KINDS


def _path(f: Field) -> str:
    return f.path if f.kind == "*" else f"body.{f.path}"


def _field_doc(f: Field, **extra: Any) -> dict[str, Any]:
    return {"kind": f.kind, "path": _path(f), "type": f.type, "item": f.item, "meaning": f.meaning, **extra}


def _version_doc(v: Version) -> dict[str, Any]:
    return {"version": v.number, "name": v.name, "fingerprint": v.fingerprint}


def schema_doc(catalog: Catalog, running: Version, approved: Approved | None, *, approval_file: str,
               error: str | None = None) -> dict[str, Any]:
    """Return `fluxagent schema --json`: running and approved versions, pending state, every field."""
    policy = Policy(running, approved.version, approved) if approved else None
    withheld = {f.canonical for f in policy.withheld} if policy else set()
    return {
        "running": _version_doc(running),
        "approved": None if approved is None else {
            **_version_doc(approved.version), "by": approved.by, "at": approved.at, "via": approved.via},
        "approval_file": approval_file,
        "approval_error": error,
        "pending": bool(policy and policy.pending),
        "held_back": [k for k in KIND_ORDER if policy and policy.held_back(k)],
        "known": [_version_doc(v) for v in catalog.versions],
        "fields": [_field_doc(f, sent=policy is not None and f.canonical not in withheld) for f in running.fields],
    }


def _stamp(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "an unknown time"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]


def schema_text(doc: dict[str, Any]) -> str:
    """Return `fluxagent schema` for people, from `schema_doc`."""
    run, appr = doc["running"], doc["approved"]
    lines = [f"running:   {run['name']}  {run['fingerprint']}  (the registry of this fluxagent)"]
    if appr is None:
        lines.append(f"approved:  NONE  ({doc['approval_file']})")
        lines.append(f"           {doc['approval_error']}")
    else:
        lines.append(f"approved:  {appr['name']}  {appr['fingerprint']}")
        lines.append(f"           by {appr['by']} at {_stamp(appr['at'])} ({appr['via']}); {doc['approval_file']}")
    if doc["pending"]:
        n = sum(1 for f in doc["fields"] if not f["sent"])
        lines.append(f"PENDING:   running {run['name']} would send {n} field{'s' if n != 1 else ''} the approved "
                     f"{appr['name']} does not allow; they are WITHHELD until you approve")
        if doc["held_back"]:
            lines.append(f"           held back (cannot be sent without them): {', '.join(doc['held_back'])}")
        lines.append("           review: `fluxagent schema --diff`; approve: `sudo fluxagent schema --approve`")
    elif appr is not None:
        lines.append("state:     everything the running registry sends is approved")
    lines.append("known:     " + ", ".join(f"{v['name']} {v['fingerprint'][:19]}…" for v in doc["known"]))
    lines.append("")
    lines.append(f"fields of {run['name']}:")
    rows = [("message", "field", "type", "clause 08 item", "status")]
    for f in doc["fields"]:
        status = "approved" if f["sent"] else ("WITHHELD" if appr is not None else "-")
        rows.append(("every message" if f["kind"] == "*" else f["kind"], f["path"], f["type"], f["item"], status))
    rows.append(("credentials", "(empty body)", "-", "Update delivery", "approved" if appr else "-"))
    lines.extend(_table(rows))
    return "\n".join(lines)


def diff_doc(d: Diff) -> dict[str, Any]:
    """Return `schema --diff --json`: the two versions and the fields added and removed."""
    return {"from": _version_doc(d.a), "to": _version_doc(d.b), "widens": d.widens,
            "added": [_field_doc(f) for f in d.added], "removed": [_field_doc(f) for f in d.removed]}


def diff_text(d: Diff) -> str:
    """Return `schema --diff` for people: one line per field added (+) or removed (-), with its clause item."""
    head = (f"{d.a.name} ({d.a.fingerprint[:19]}…) -> {d.b.name} ({d.b.fingerprint[:19]}…): "
            f"{len(d.added)} field{'s' if len(d.added) != 1 else ''} added, {len(d.removed)} removed")
    if not d.added and not d.removed:
        return head + "\n  (the same fields: nothing to approve)"
    rows = [("", "message", "field", "type", "clause 08 item", "meaning")]
    for sign, fields in (("+", d.added), ("-", d.removed)):
        for f in fields:
            rows.append((sign, "every message" if f.kind == "*" else f.kind, _path(f), f.type, f.item, f.meaning))
    note = ("  approving it lets the added fields be sent" if d.widens
            else "  it only narrows what is sent: no approval needed")
    return "\n".join([head, *_table(rows), note])


def registry_block(version: Version) -> str:
    """Return the README's "what is sent" block: which schema version it is, then its table of fields."""
    return (f"Schema **{version.name}**, fingerprint `{version.fingerprint}`. `fluxagent schema` shows the version "
            "your instance runs and the one you approved; nothing outside the approved one is sent.\n\n"
            + registry_table(version.fields))
