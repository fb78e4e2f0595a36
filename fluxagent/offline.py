"""Air-gapped exchange: `export` writes a signed bundle of the sealed messages `run` would send;
`import` takes the vendor's signed answer, verifies every receipt against the exported requests
and records them as `run` records receipts (docs/PROTOCOL.md §8).

The exported requests wait in `exported.json` in the state dir (exact envelopes, so each receipt's
`req` and `nonce` can be checked) until their answer comes back; a receipt for anything else is
ignored, so an old answer replayed changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fluxagent.delivery import Engine
from fluxagent.errors import EnvelopeError, FluxError, StateError
from fluxagent.kinds import SCHEDULED
from fluxagent.license.file import check_license
from fluxagent.license.record import read_license_file
from fluxagent.statedir import fsutil, state
from fluxagent.statedir.spool import Entry
from fluxagent.timefmt import utc_iso
from fluxagent.wire import envelope
from fluxagent.wire.messages import Sealed
from fluxagent.wire.receipts import Delivered, ReceiptError, verify_receipt

BUNDLE_TYPE = envelope.payload_type("bundle")
ANSWER_TYPE = envelope.payload_type("answer")
PENDING_FILE = "exported.json"
MAX_PENDING = 10_000
MAX_ANSWER_BYTES = 16 * 2**20


class ImportRefused(FluxError):
    """The vendor's answer cannot be trusted: bad signature, another instance, wrong shape."""

    code = "import"


@dataclass(frozen=True)
class Pending:
    """One exported request waiting for its receipt."""

    kind: str
    endpoint: str
    seq: int
    envelope: bytes
    exported_at: int

    def sealed(self) -> Sealed:
        """Return the Sealed view (what a receipt is checked against)."""
        payload = envelope.parse_envelope(self.envelope)[1]
        return Sealed(self.kind, self.endpoint, payload, json.loads(payload), self.envelope)

    def read_envelope(self) -> bytes:
        """Return the exact request envelope (as a spool entry does)."""
        return self.envelope

    @property
    def req(self) -> str:
        """Return `sha256:<hex>` of the request payload, as receipts name it."""
        return "sha256:" + hashlib.sha256(envelope.parse_envelope(self.envelope)[1]).hexdigest()


def build_bundle(entries: Sequence[Entry | Pending], *, signing_key: Any, iid: str, aud: str, now: int) -> bytes:
    """Return the bundle: a DSSE envelope (instance key) over the exact request envelopes. Pure."""
    payload = envelope.canonical_json({
        "v": 1, "iid": iid, "aud": aud, "ts": now,
        "messages": [{"endpoint": e.endpoint, "envelope": e.read_envelope().decode()} for e in entries]})
    return envelope.sign_envelope(BUNDLE_TYPE, payload, signing_key) + b"\n"


# ---- pending requests in the state dir ----


def load_pending(engine: Engine) -> list[Pending]:
    """Return the exported requests still waiting for an answer; raises StateError."""
    doc = state.read_json(engine.config.instance.state_dir / PENDING_FILE) or {}
    out = []
    try:
        for r in doc.get("requests", []):
            out.append(Pending(r["kind"], r["endpoint"], int(r["seq"]), r["envelope"].encode(), int(r["exported_at"])))
    except (KeyError, TypeError, ValueError, AttributeError):
        path = engine.config.instance.state_dir / PENDING_FILE
        raise StateError(f"{path} is corrupt", hint=f"move {path} aside; export again") from None
    return out


def save_pending(engine: Engine, pending: Sequence[Pending]) -> None:
    """Write the pending requests atomically (0600), keeping the newest MAX_PENDING; raises StateError."""
    keep = list(pending)[-MAX_PENDING:]
    state.write_json(engine.config.instance.state_dir / PENDING_FILE, {"v": 1, "requests": [
        {"kind": p.kind, "endpoint": p.endpoint, "seq": p.seq, "envelope": p.envelope.decode(),
         "exported_at": p.exported_at} for p in keep]})


# ---- export ----


def prepare_export(engine: Engine, now: float) -> tuple[bytes, list[Entry]]:
    """Produce every scheduled kind (seq persisted, spooled) and return the bundle of the spool."""
    engine.produce(SCHEDULED, now)
    entries = engine.spool.entries()
    bundle = build_bundle(entries, signing_key=engine.identity.signing_key, iid=engine.identity.instance_id,
                          aud=engine.config.server.audience, now=int(now))
    return bundle, entries


def commit_export(engine: Engine, entries: Sequence[Entry], now: float, where: str) -> None:
    """After the bundle is written: move its entries from the spool to pending, ledgering each."""
    pending = load_pending(engine)
    known = {p.seq for p in pending}
    pending += [Pending(e.kind, e.endpoint, e.seq, e.read_envelope(), int(now)) for e in entries if e.seq not in known]
    save_pending(engine, pending)
    for e in entries:
        engine.record(now, "exported", e.kind, outcome="exported", endpoint=e.endpoint, seq=e.seq,
                      payload=e.payload, detail=f"in offline bundle {where}"[:300])
        engine.spool.remove(e)


# ---- import ----


@dataclass
class ImportResult:
    """What an import did."""

    delivered: list[tuple[Pending, Delivered]] = field(default_factory=list)
    rejected: list[tuple[Pending, int, str]] = field(default_factory=list)
    unknown: int = 0
    bad: list[str] = field(default_factory=list)
    license_installed: str | None = None


def open_answer(data: bytes, vendor_keys: Sequence[bytes], iid: str) -> dict[str, Any]:
    """Return the verified answer object; raises ImportRefused saying why. Pure."""
    if len(data) > MAX_ANSWER_BYTES:
        raise ImportRefused(f"answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        obj = envelope.open_envelope(data, vendor_keys, ANSWER_TYPE).obj
    except EnvelopeError as exc:
        raise ImportRefused(f"answer does not verify against the pinned vendor keys: {exc.message}") from None
    if type(obj.get("v")) is not int or obj["v"] != 1:
        raise ImportRefused("answer v is not 1")
    if obj.get("aud") != iid:
        raise ImportRefused("answer is addressed to another instance",
                            hint="import the answer to the bundle this instance exported")
    items = obj.get("receipts")
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("req"), str) for i in items):
        raise ImportRefused("answer receipts are not a list of objects with req")
    lic = obj.get("license_file")
    if lic is not None and not isinstance(lic, str):
        raise ImportRefused("answer license_file is not base64 text")
    return obj


def import_answer(engine: Engine, data: bytes, now: float) -> ImportResult:
    """Verify the answer and apply each receipt as `run` would; raises ImportRefused / StateError."""
    cfg = engine.config
    obj = open_answer(data, cfg.server.vendor_keys, engine.identity.instance_id)
    license_bytes = _license_of(obj, cfg.server.vendor_keys, cfg.instance.bound_domain, now)
    result = ImportResult()
    if license_bytes is not None:
        try:
            installed = read_license_file(cfg.instance.license_file)
        except OSError as exc:
            raise StateError(f"cannot read the installed license file {cfg.instance.license_file}:"
                             f" {exc.strerror or exc}") from None
        if not newer_license(license_bytes, installed, cfg.server.vendor_keys, cfg.instance.bound_domain, now):
            license_bytes = None  # the very file installed already: an answer imported twice changes nothing
            result.license_installed = "the answer's license file is already installed"
    pending = {p.req: p for p in load_pending(engine)}
    for item in obj["receipts"]:
        p = pending.get(item["req"])
        if p is None:
            result.unknown += 1  # answered already, or not ours to apply
            continue
        status = item.get("status")
        if status != 200:
            code = status if isinstance(status, int) and 400 <= status <= 599 else 400
            why = f"http {code}: {str(item.get('error', ''))[:60]} {str(item.get('detail', ''))[:120]}".strip()
            engine.record(now, "rejected", p.kind, outcome="rejected", endpoint=p.endpoint, seq=p.seq,
                          payload=p.sealed().payload, http_status=code, detail=why)
            result.rejected.append((p, code, why))
            del pending[item["req"]]
            continue
        try:
            body, ts, digest = verify_receipt(p.sealed(), str(item.get("receipt", "")).encode(), cfg.server.vendor_keys)
        except ReceiptError as exc:
            result.bad.append(f"seq {p.seq}: {exc.message}")
            continue
        d = Delivered(body, ts, digest, 200, 0.0)  # the answer's age says nothing about this clock
        engine.record_delivery(p.sealed(), d, now, source="import", event="imported")
        result.delivered.append((p, d))
        del pending[item["req"]]
    if license_bytes is not None:
        result.license_installed = _install_license(engine, license_bytes, now)
        engine.refresh_license(now)  # the state derives from the license file too
    save_pending(engine, list(pending.values()))
    return result


def _license_of(obj: dict[str, Any], vendor_keys: Sequence[bytes], domain: str, now: float) -> bytes | None:
    """Return the renewed license file of the answer after checking it; raises ImportRefused."""
    text = obj.get("license_file")
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImportRefused("answer license_file is not valid base64") from None
    verdict = check_license(data, tuple(vendor_keys), domain, now)
    if verdict.state != "valid":
        raise ImportRefused(f"renewed license file is not valid here: {verdict.reason}")
    return data


def newer_license(offered: bytes, installed: bytes | None, vendor_keys: Sequence[bytes], domain: str,
                  now: float) -> bool:
    """Return True to install offered, False if it is the installed file; raises ImportRefused if it is older.

    Newer means issued later than the installed license (which counts only if it verifies): an old
    answer replayed must not roll the license back (docs/PROTOCOL.md §8). Pure.
    """
    if installed is not None and offered == installed:
        return False
    new = check_license(offered, tuple(vendor_keys), domain, now)
    old = check_license(installed, tuple(vendor_keys), domain, now)
    if old.issued_at is None or new.issued_at is None or new.issued_at > old.issued_at:
        return True
    raise ImportRefused(
        f"the answer's license file ({new.license_id}, issued {utc_iso(new.issued_at)}) is not newer than the"
        f" installed license ({old.license_id}, issued {utc_iso(old.issued_at)}): an old answer replayed?",
        hint="import the vendor's latest answer; the installed license file is kept")


def _install_license(engine: Engine, data: bytes, now: float) -> str:
    """Install the license file atomically and ledger it; return what was installed."""
    cfg = engine.config
    verdict = check_license(data, cfg.server.vendor_keys, cfg.instance.bound_domain, now)
    path = cfg.instance.license_file
    try:
        fsutil.atomic_write(path, data, mode=0o644)
    except OSError as exc:
        raise StateError(f"cannot install the renewed license file {path}: {exc.strerror or exc}") from exc
    what = f"license {verdict.license_id} installed at {path}, valid until {utc_iso(verdict.expires_at or 0)}"
    engine.ledger.append(now=int(now), event="installed", kind="license", outcome="installed",
                         payload_sha256=hashlib.sha256(data).hexdigest(), detail=what)
    return what
