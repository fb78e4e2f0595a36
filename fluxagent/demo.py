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
from fluxagent.fsutil import atomic_write
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


def make_workspace(
    root: Path,
    *,
    server_url: str = "http://127.0.0.1:9",
    now: float | None = None,
    vendor_keys: list[nacl.signing.SigningKey] | None = None,
    database: str | None = None,
) -> Workspace:
    """Create sample database, vendor keys, signed license, config and identity under root.

    database: an empty PostgreSQL or MySQL/MariaDB database to fill instead of a new SQLite file;
    a password in its URL moves to a 0600 password file, so the config holds none.
    """
    t = time.time() if now is None else now
    root.mkdir(parents=True, exist_ok=True)
    data = sample.generate()
    platform: dict[str, str] = {}
    if database:
        from fluxagent.sources import dburl
        from fluxagent.testing.sample_db import write_database

        write_database(database, data)
        password = dburl.parse(database).password
        platform["database"] = database
        if password is not None:
            platform["database"] = dburl.without_password(database)
            platform["password_file"] = str(root / "db.password")
            atomic_write(root / "db.password", password.encode() + b"\n", mode=0o600)
    else:
        platform["database"] = f"sqlite:///{sample.write_sqlite(root / 'fluxbilling.db', data)}"
    keys = vendor_keys or [nacl.signing.SigningKey.generate() for _ in range(2)]
    lic = root / "license.json"
    lic.write_bytes(
        make_license(
            keys[0],
            license_id="FB-DEMO-0001",
            bound_domain=BOUND_DOMAIN,
            issued_at=int(t) - 86400,
            expires_at=int(t) + 365 * 86400,
        )
    )
    doc = config.to_mapping(config.Config())
    doc["instance"].update(bound_domain=BOUND_DOMAIN, state_dir=str(root / "state"), license_file=str(lic))
    doc["server"].update(url=server_url, vendor_keys=[base64.b64encode(bytes(k.verify_key)).decode() for k in keys])
    doc["platform"].update(platform, hostname="billing-01.example.com")
    import tomli_w

    cfg_path = root / "fluxagent.toml"
    cfg_path.write_text(tomli_w.dumps(doc))
    cfg = config.load(cfg_path)
    identity.ensure(cfg.instance.state_dir, now=int(t))
    return Workspace(root, cfg, keys, data)


def _without_volatile(payload: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in payload.items() if k not in ("seq", "ts", "nonce")}


def run_demo(where: Path | None, echo: Echo, database: str | None = None) -> int:
    """Run the demo in where (or a temp dir removed afterwards), on database if given; return the exit code."""
    import io
    import json

    from fluxagent import logs
    from fluxagent.agent import Agent
    from fluxagent.ledger import Ledger
    from fluxagent.status import ledger_lines
    from fluxagent.testing.server import ReferenceServer
    from fluxagent.testing.server_protocol import LicensePolicy

    root = where or Path(tempfile.mkdtemp(prefix="fluxagent-demo-"))
    keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
    policy = LicensePolicy(
        license_id="FB-DEMO-0001", expires_at=int(time.time()) + 365 * 86400, grace_until=int(time.time()) + 379 * 86400
    )
    failed = False
    try:
        with ReferenceServer(signing_keys=keys, license=policy) as server:
            ws = make_workspace(root, server_url=server.url, vendor_keys=keys, database=database)
            d = ws.data
            echo(
                f"== sample platform: {len(d.clients)} clients ({d.active_clients} active), {len(d.users)} users, "
                f"{len(d.servers)} servers, {len(d.network_ranges)} network ranges, {len(d.invoices)} invoices"
            )
            echo(f"   workspace {root}{'' if where else ' (removed at the end)'}\n")
            sealed, failures = build_preview(ws.cfg, ["license", "heartbeat", "digest", "credentials"])
            echo("== 1. fluxagent preview: exactly what would be sent\n")
            echo(preview_text(sealed, ws.cfg.server.url))
            for kind, err in failures:
                echo(f"\n!! {kind} would not be sent: {err}")
                failed = True

            echo(f"\n== 2. one full cycle (`fluxagent run --once`) against the reference server at {server.url}")
            log_buf = io.StringIO()
            logs.configure("json", "info", stream=log_buf)
            agent = Agent(ws.cfg)
            try:
                code = agent.once()
            finally:
                agent.close()
            received = server.received
            echo(f"   exit code {code}; the server received {len(received)} requests:")
            previewed = {s.kind: s.obj for s in sealed}
            for r in received:
                got = json.loads(base64.b64decode(json.loads(r.body)["payload"]))
                kind = r.endpoint.rsplit("/", 1)[-1].replace("update-credentials", "credentials")
                same = _without_volatile(got) == _without_volatile(previewed.get(kind, {}))
                failed |= not same
                echo(
                    f"   POST {r.endpoint:<24} {len(r.body):>6} bytes  http {r.status}  "
                    + (
                        "body identical to the preview (apart from seq/ts/nonce)"
                        if same
                        else "DIFFERS from the preview"
                    )
                )
            failed |= code != 0

            echo("\n== 3. the ledger: what left the machine (`fluxagent log`)")
            ledger = Ledger(ws.cfg.instance.state_dir / "ledger", readonly=True)
            echo(ledger_lines(list(ledger.entries())))
            res = ledger.verify()
            echo(
                f"   `fluxagent log --verify`: {'hash chain intact' if res.ok else 'BROKEN: ' + str(res.reason)} "
                f"({res.checked} entries)"
            )
            failed |= not res.ok

            needles = sample.personal_data(d)
            blobs = [(f"{s.kind} preview envelope", s.envelope) for s in sealed]
            blobs += [(f"request {i + 1} to {r.endpoint}", r.body) for i, r in enumerate(received)]
            hits = sample.scan(blobs, needles)
            total = sum(len(b) for _, b in blobs)
            echo(
                f"\n== 4. personal-data scan: {len(needles)} strings from the sample (names, emails, phones, "
                f"addresses, usernames, password hashes, invoices, server names, IPs, ranges)"
            )
            echo(
                f"   searched {total} bytes: {len(sealed)} previewed envelopes and every byte of the "
                f"{len(received)} requests the server received, raw and base64-decoded"
            )
            if hits:
                for h in hits[:20]:
                    echo(f"   FOUND {h.needle!r} in {h.where}")
                echo(f"   verdict: FAIL — {len(hits)} personal-data strings left or would leave the machine")
                return 1
            echo(
                "   verdict: PASS — none of them left the machine"
                + ("" if not failed else "; but see the problems above")
            )
            return 1 if failed else 0
    finally:
        if where is None:
            shutil.rmtree(root, ignore_errors=True)
