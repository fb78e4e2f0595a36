"""license-status.json: the recorded inputs of the license state machine and the state derived.

The platform reads `state` (and the fields beside it); fluxagent itself never trusts a stored
`state`: every reader derives it again from the recorded receipt and contact, the license file
and the current time (`licensing.derive`), so a cached `valid` cannot outlive its expiry.
Format: docs/PROTOCOL.md, "license-status.json".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fluxagent.config import Config
from fluxagent.errors import StateError
from fluxagent.license.file import MAX_LICENSE_BYTES, LicenseFile, check_license
from fluxagent.license.state import CONTACT_OUTCOMES, Contact, Receipt, Status, derive, seen_after
from fluxagent.statedir import state

FILE = "license-status.json"
MODE = 0o640  # the platform's group reads it
SEEN_REFRESH = 3600  # rewrite at least this often while running, to keep `seen_until` recent


def read_license_file(path: Path) -> bytes | None:
    """Return the license file bytes (at most one byte over the limit), or None when it does not exist.

    Raises OSError for any other trouble reading it.
    """
    try:
        with path.open("rb") as f:
            return f.read(MAX_LICENSE_BYTES + 1)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Stored:
    """The recorded inputs: last receipt, latest contact, and the latest time a state was derived."""

    receipt: Receipt | None = None
    contact: Contact = field(default_factory=Contact)
    seen_until: float | None = None
    doc: dict[str, Any] | None = None  # the document as read (None: absent or unreadable)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _opt_int(v: Any) -> int | None:
    return int(v) if _num(v) else None


def _opt_float(v: Any) -> float | None:
    return float(v) if _num(v) else None


def parse(doc: dict[str, Any] | None) -> Stored:
    """Return the inputs recorded in a license-status document; malformed parts count as absent. Pure."""
    if not isinstance(doc, dict):
        return Stored()
    rec, con = doc.get("receipt"), doc.get("contact")
    receipt = None
    if isinstance(rec, dict) and isinstance(rec.get("state"), str) and _num(rec.get("server_ts")) \
            and _num(rec.get("received_at")):
        lid = rec.get("license_id")
        receipt = Receipt(rec["state"], lid if isinstance(lid, str) else None, _opt_int(rec.get("expires_at")),
                          _opt_int(rec.get("grace_until")), _opt_int(rec.get("next_check_in")),
                          int(rec["server_ts"]), float(rec["received_at"]),
                          _opt_float(rec.get("skew")) or 0.0,
                          "import" if rec.get("source") == "import" else "online",
                          rec["for_license"] if isinstance(rec.get("for_license"), str) else None)
    contact = Contact()
    if isinstance(con, dict) and con.get("outcome") in CONTACT_OUTCOMES:
        contact = Contact(con["outcome"], _opt_float(con.get("at")), _opt_float(con.get("since")),
                          str(con.get("reason") or "")[:200])
    return Stored(receipt, contact, _opt_float(doc.get("seen_until")), doc)


def load(state_dir: Path) -> Stored:
    """Return the recorded inputs of state_dir (empty when the file is absent or corrupt)."""
    try:
        return parse(state.read_json(state_dir / FILE))
    except StateError:
        return Stored()


def read_file_verdict(cfg: Config, now: float, read: Callable[[Path], bytes | None] = read_license_file
                      ) -> LicenseFile:
    """Return the verdict on the configured license file at time now."""
    try:
        data = read(cfg.instance.license_file)
    except OSError as exc:
        return LicenseFile("invalid", None, f"cannot read {cfg.instance.license_file}: {exc.strerror}",
                           code="unreadable")
    return check_license(data, cfg.server.vendor_keys, cfg.instance.bound_domain, now)


def to_doc(st: Status, stored: Stored, file: LicenseFile, now: float) -> dict[str, Any]:
    """Return the license-status.json document for a derived status and its inputs. Pure."""
    r = stored.receipt
    return {
        "v": 1,
        "state": st.state,
        "clock_skew": st.clock_skew,
        "reasons": list(st.reasons),
        "license_id": st.license_id,
        "expires_at": st.expires_at,
        "grace_until": st.grace_until,
        "checked_at": st.confirmed_at,
        "server_ts": r.server_ts if r else None,
        "next_change": st.next_change,
        "updated_at": int(now),
        "seen_until": int(max(st.effective_now, stored.seen_until or 0)),
        "source": "file" if r is None or st.confirmed_at is None else "import" if r.source == "import" else "receipt",
        "receipt": asdict(r) if r else None,
        "contact": asdict(stored.contact),
        "file": {"state": file.state, "code": file.code, "license_id": file.license_id, "reason": file.reason,
                 "expires_at": file.expires_at},
    }


_VOLATILE = ("updated_at", "seen_until")


def changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """True when new says something old did not, or old's seen_until is over an hour behind."""
    if old is None:
        return True
    if {k: v for k, v in old.items() if k not in _VOLATILE} != {k: v for k, v in new.items() if k not in _VOLATILE}:
        return True
    return not _num(old.get("seen_until")) or new["seen_until"] - old["seen_until"] >= SEEN_REFRESH


def current(cfg: Config, now: float | None = None, stored: Stored | None = None,
            read: Callable[[Path], bytes | None] = read_license_file) -> tuple[Status, Stored, LicenseFile]:
    """Return the license state derived now from state_dir's record and the license file (read-only)."""
    t = time.time() if now is None else now
    stored = load(cfg.instance.state_dir) if stored is None else stored
    file = read_file_verdict(cfg, t, read)
    st = derive(file, stored.receipt, stored.contact, t, cfg.schedule.offline_grace, stored.seen_until)
    return st, stored, file


def refresh(cfg: Config, now: float, *, receipt: Receipt | None = None, contact: Contact | None = None,
            read: Callable[[Path], bytes | None] = read_license_file) -> tuple[Status, LicenseFile, bool]:
    """Record a new receipt and/or contact outcome, derive the state, and write the file if it changed.

    Returns the status, the license file verdict, and whether the file was written. Raises StateError
    when the file cannot be written. A contact with the outcome already recorded keeps the first
    time it was seen (the start of an outage).
    """
    stored = load(cfg.instance.state_dir)
    if receipt is not None:  # recorded against the license file it answers
        receipt = replace(receipt, for_license=read_file_verdict(cfg, now, read).license_id)
        # a fresh signed server time corrects a seen_until that a clock running ahead pushed too far
        stored = replace(stored, receipt=receipt, seen_until=seen_after(stored.seen_until, receipt))
    if contact is not None and contact.outcome != stored.contact.outcome:
        stored = replace(stored, contact=contact)
    st, stored, file = current(cfg, now, stored, read)
    doc = to_doc(st, stored, file, now)
    write = receipt is not None or changed(stored.doc, doc)
    if write:
        state.write_json(cfg.instance.state_dir / FILE, doc, mode=MODE)
    return st, file, write


__all__ = ["FILE", "Stored", "changed", "current", "load", "parse", "read_file_verdict", "refresh", "to_doc"]

