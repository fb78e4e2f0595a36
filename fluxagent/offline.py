"""Air-gapped exchange: `export` writes a signed bundle of the sealed messages `run` would send;
`import` takes the vendor's signed answer, verifies every receipt against the exported requests
and records them as `run` records receipts (docs/PROTOCOL.md §8).

The exported requests wait in the state dir until their answer comes back: their spool files move
to `exported/` (exact envelopes, so each receipt's `req` and `nonce` can be checked), listed in
`exported.json`; a receipt for anything else is ignored, so an old answer replayed changes nothing.
A bundle is written as a stream, its envelopes read from those files: memory stays bounded at any
inventory size, as for `run`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxagent.delivery import Engine, sealed_of
from fluxagent.errors import EnvelopeError, FluxError, StateError
from fluxagent.kinds import SCHEDULED
from fluxagent.license.file import check_license
from fluxagent.license.record import read_license_file
from fluxagent.statedir import fsutil, state
from fluxagent.statedir.spool import Entry, read_entry
from fluxagent.timefmt import utc_iso
from fluxagent.wire import envelope
from fluxagent.wire.messages import digest_summary
from fluxagent.wire.receipts import Delivered, ReceiptError, verify_receipt
from fluxagent.wire.stream import Streamed, Text, seal_streamed

BUNDLE_TYPE = envelope.payload_type("bundle")
ANSWER_TYPE = envelope.payload_type("answer")
PENDING_FILE = "exported.json"
EXPORTED_DIR = "exported"  # the exported requests' spool files, until their receipts come back
MAX_PENDING = 10_000
MAX_ANSWER_BYTES = 16 * 2**20


class ImportRefused(FluxError):
    """The vendor's answer cannot be trusted: bad signature, another instance, wrong shape."""

    code = "import"


@dataclass(frozen=True)
class Pending:
    """One exported request waiting for its receipt: its spool entry, kept in `exported/`."""

    entry: Entry
    exported_at: int

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def endpoint(self) -> str:
        return self.entry.endpoint

    @property
    def seq(self) -> int:
        return self.entry.seq

    @property
    def req(self) -> str:
        """Return `sha256:<hex>` of the request payload, as receipts name it."""
        return "sha256:" + self.entry.payload_sha256


def build_bundle(entries: Sequence[Entry], *, signing_key: Any, iid: str, aud: str, now: int) -> Streamed:
    """Return the bundle: a DSSE envelope (instance key) over the exact request envelopes.

    As a stream: each envelope is read from its spool file in pieces whenever the bundle's bytes
    are needed (to sign it, to write it), so a digest of millions of identifiers is never held.
    """
    return seal_streamed(BUNDLE_TYPE, {
        "v": 1, "iid": iid, "aud": aud, "ts": now,
        "messages": [{"endpoint": e.endpoint, "envelope": Text.of(e.envelope_chunks)} for e in entries]},
        signing_key)


# ---- pending requests in the state dir ----


def _exported_dir(engine: Engine) -> Path:
    return engine.config.instance.state_dir / EXPORTED_DIR


def _inline_entry(kind: str, endpoint: str, seq: int, env: bytes, exported_at: int) -> Entry:
    """Return the Entry of a request kept inline in exported.json (as versions before 0.2.0 kept them)."""
    payload = envelope.parse_envelope(env)[1]
    obj = json.loads(payload)
    body = obj.get("body") if isinstance(obj, dict) else None
    summary = digest_summary(body) if kind == "digest" and isinstance(body, dict) else None
    if summary is not None:
        summary["payload_bytes"] = len(payload)
    return Entry(kind, endpoint, seq, hashlib.sha256(payload).hexdigest(), env, Path(), len(env), exported_at,
                 str(obj.get("iid", "")), str(obj.get("nonce", "")), summary)


def load_pending(engine: Engine) -> tuple[list[Pending], list[str]]:
    """Return the exported requests still waiting for an answer (seq order), and what was damaged;
    raises StateError when exported.json is.

    Every entry file in `exported/` is one: a file moved there by an export that died before listing
    it counts from its modification time. One that cannot be read cannot take its receipt: it is
    left out and named in the second list (the rest go on).
    """
    path = engine.config.instance.state_dir / PENDING_FILE
    doc = state.read_json(path) or {}
    out: list[Pending] = []
    damaged: list[str] = []
    listed: dict[str, int] = {}
    try:
        for r in doc.get("requests", []):
            if "envelope" in r:  # kept inline by an earlier version
                out.append(Pending(_inline_entry(r["kind"], r["endpoint"], int(r["seq"]), r["envelope"].encode(),
                                                 int(r["exported_at"])), int(r["exported_at"])))
            else:
                listed[str(r["file"])] = int(r["exported_at"])
    except (KeyError, TypeError, ValueError, AttributeError, EnvelopeError, RecursionError):
        raise StateError(f"{path} is corrupt", hint=f"move {path} aside; export again") from None
    directory = _exported_dir(engine)
    try:
        files = sorted(f for f in directory.iterdir() if f.suffix == ".json")
    except FileNotFoundError:
        files = []
    except OSError as exc:
        raise StateError(f"cannot list {directory}: {exc.strerror or exc}") from exc
    for f in files:
        try:
            entry = read_entry(f)
            at = listed.pop(f.name, None)
            out.append(Pending(entry, at if at is not None else int(f.stat().st_mtime)))
        except (OSError, ValueError) as exc:
            moved = engine.spool.quarantine(f)
            damaged.append(f"{EXPORTED_DIR}/{f.name} is unreadable ({exc}): a receipt for it cannot be applied;"
                           f" moved to {moved.relative_to(engine.config.instance.state_dir)}")
    damaged += [f"{EXPORTED_DIR}/{name[:80]!r} is missing: a receipt for it cannot be applied" for name in listed]
    return sorted(out, key=lambda p: p.seq), damaged


def save_pending(engine: Engine, pending: Sequence[Pending]) -> None:
    """Write the pending requests atomically (0600), keeping the newest MAX_PENDING, and remove the
    files in `exported/` of every other request; raises StateError."""
    keep = sorted(pending, key=lambda p: p.seq)[-MAX_PENDING:]
    state.write_json(engine.config.instance.state_dir / PENDING_FILE, {"v": 2, "requests": [
        {"kind": p.kind, "endpoint": p.endpoint, "seq": p.seq, "exported_at": p.exported_at,
         **({"file": p.entry.path.name} if p.entry.path.name else {"envelope": p.entry.envelope.decode()})}
        for p in keep]})
    held = {p.entry.path.name for p in keep}
    directory = _exported_dir(engine)
    try:
        stale = [f for f in directory.iterdir() if f.name not in held]
        for f in stale:
            f.unlink()
        if stale:
            fsutil.fsync_dir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StateError(f"cannot tidy {directory}: {exc.strerror or exc}") from exc


# ---- export ----


def prepare_export(engine: Engine, now: float) -> tuple[Streamed, list[Entry]]:
    """Produce every scheduled kind (seq persisted, spooled) and return the bundle of the spool."""
    engine.produce(SCHEDULED, now)
    entries = engine.spool.entries()
    bundle = build_bundle(entries, signing_key=engine.identity.signing_key, iid=engine.identity.instance_id,
                          aud=engine.config.server.audience, now=int(now))
    return bundle, entries


def bundle_chunks(bundle: Streamed) -> Iterator[bytes]:
    """Yield the bundle file's bytes: the envelope text and a newline."""
    yield from bundle.envelope_chunks()
    yield b"\n"


def commit_export(engine: Engine, entries: Sequence[Entry], now: float, where: str) -> None:
    """After the bundle is written: move its entries from the spool to `exported/`, ledgering each."""
    pending, _damaged = load_pending(engine)
    known = {p.seq for p in pending}
    directory = _exported_dir(engine)
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StateError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    for e in entries:
        if e.seq in known:  # exported before (the same request): the spool's copy goes
            engine.spool.remove(e)
            continue
        # moved first: a file in exported/ waits for its receipt whether or not the list below names it
        pending.append(Pending(engine.spool.move_out(e, directory), int(now)))
        engine.record_entry(int(now), "exported", e, outcome="exported", detail=f"in offline bundle {where}"[:300])
    save_pending(engine, pending)


# ---- import ----


@dataclass
class ImportResult:
    """What an import did."""

    delivered: list[tuple[Pending, Delivered]] = field(default_factory=list)
    rejected: list[tuple[Pending, int, str]] = field(default_factory=list)
    unknown: int = 0
    bad: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # exported requests that cannot take a receipt
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
    waiting, result.damaged = load_pending(engine)
    pending = {p.req: p for p in waiting}
    for item in obj["receipts"]:
        p = pending.get(item["req"])
        if p is None:
            result.unknown += 1  # answered already, or not ours to apply
            continue
        status = item.get("status")
        if status != 200:
            code = status if isinstance(status, int) and 400 <= status <= 599 else 400
            why = f"http {code}: {str(item.get('error', ''))[:60]} {str(item.get('detail', ''))[:120]}".strip()
            engine.record_entry(int(now), "rejected", p.entry, outcome="rejected", http_status=code, detail=why)
            result.rejected.append((p, code, why))
            del pending[item["req"]]
            continue
        sealed = sealed_of(p.entry)
        try:
            body, ts, digest = verify_receipt(sealed, str(item.get("receipt", "")).encode(), cfg.server.vendor_keys)
        except ReceiptError as exc:
            result.bad.append(f"seq {p.seq}: {exc.message}")
            continue
        d = Delivered(body, ts, digest, 200, 0.0)  # the answer's age says nothing about this clock
        engine.record_delivery(sealed, d, now, source="import", event="imported")
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
