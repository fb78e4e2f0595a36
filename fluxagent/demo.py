"""`fluxagent demo`: a throw-away sample platform, the preview, and a scan for personal data."""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from fluxagent import config, identity
from fluxagent.commands import build_preview
from fluxagent.config import Config
from fluxagent.testing import sample
from fluxagent.testing.licenses import make_license
from fluxagent.views import preview_text

Echo = Callable[[str], None]
BOUND_DOMAIN = "billing.example.com"


@dataclass
class Workspace:
    """A demo workspace: its directory, config, vendor keys and sample data."""

    root: Path
    cfg: Config
    vendor_keys: list[nacl.signing.SigningKey]
    data: sample.SampleData


def make_workspace(root: Path, *, server_url: str = "http://127.0.0.1:9", now: float | None = None,
                   vendor_keys: list[nacl.signing.SigningKey] | None = None) -> Workspace:
    """Create sample database, vendor keys, signed license, config and identity under root."""
    t = time.time() if now is None else now
    root.mkdir(parents=True, exist_ok=True)
    data = sample.generate()
    db = sample.write_sqlite(root / "fluxbilling.db", data)
    keys = vendor_keys or [nacl.signing.SigningKey.generate() for _ in range(2)]
    lic = root / "license.json"
    lic.write_bytes(make_license(keys[0], license_id="FB-DEMO-0001", bound_domain=BOUND_DOMAIN,
                                 issued_at=int(t) - 86400, expires_at=int(t) + 365 * 86400))
    doc = config.to_mapping(config.Config())
    doc["instance"].update(bound_domain=BOUND_DOMAIN, state_dir=str(root / "state"), license_file=str(lic))
    doc["server"].update(url=server_url, vendor_keys=[base64.b64encode(bytes(k.verify_key)).decode() for k in keys])
    doc["platform"].update(database=f"sqlite:///{db}", hostname="billing-01.example.com")
    import tomli_w

    cfg_path = root / "fluxagent.toml"
    cfg_path.write_text(tomli_w.dumps(doc))
    cfg = config.load(cfg_path)
    identity.ensure(cfg.instance.state_dir, now=int(t))
    return Workspace(root, cfg, keys, data)


def run_demo(where: Path | None, echo: Echo) -> int:
    """Run the demo in where (or a temp dir removed afterwards); return the exit code."""
    root = where or Path(tempfile.mkdtemp(prefix="fluxagent-demo-"))
    try:
        ws = make_workspace(root)
        d = ws.data
        echo(f"== sample platform: {len(d.clients)} clients ({d.active_clients} active), {len(d.users)} users, "
             f"{len(d.servers)} servers, {len(d.network_ranges)} network ranges, {len(d.invoices)} invoices")
        echo(f"   workspace {root}{'' if where else ' (removed at the end)'}\n")
        sealed, failures = build_preview(ws.cfg, ["license", "heartbeat", "digest", "credentials"])
        echo("== fluxagent preview: exactly what would be sent\n")
        echo(preview_text(sealed, ws.cfg.server.url))
        for kind, err in failures:
            echo(f"\n!! {kind} would not be sent: {err}")
        needles = sample.personal_data(d)
        blobs = [(f"{s.kind} envelope", s.envelope) for s in sealed]
        hits = sample.scan(blobs, needles)
        total = sum(len(b) for _, b in blobs)
        echo(f"\n== personal-data scan: {len(needles)} strings from the sample (names, emails, phones, "
             f"addresses, usernames, password hashes, invoices, server names, IPs, ranges)")
        echo(f"   searched {total} bytes in {len(blobs)} envelopes, raw and base64-decoded")
        if hits:
            for h in hits[:20]:
                echo(f"   FOUND {h.needle!r} in {h.where}")
            echo(f"   verdict: FAIL — {len(hits)} personal-data strings would leave the machine")
            return 1
        echo("   verdict: PASS — none of them would leave the machine")
        return 1 if failures else 0
    finally:
        if where is None:
            shutil.rmtree(root, ignore_errors=True)
