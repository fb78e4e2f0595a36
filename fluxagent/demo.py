"""`fluxagent demo`: a throw-away sample platform, the preview, and a scan for personal data."""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nacl.signing

from fluxagent.collect import build_preview
from fluxagent.kinds import KINDS
from fluxagent.report.preview import preview_text
from fluxagent.testing import sample
from fluxagent.testing.workspace import make_workspace

Echo = Callable[[str], None]






def _without_volatile(payload: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in payload.items() if k not in ("seq", "ts", "nonce")}


def run_demo(where: Path | None, echo: Echo, database: str | None = None) -> int:
    """Run the demo in where (or a temp dir removed afterwards), on database if given; return the exit code."""
    import io
    import json

    from fluxagent import logs
    from fluxagent.daemon.agent import Agent
    from fluxagent.report.log import ledger_lines
    from fluxagent.statedir.ledger import Ledger
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
            sealed, failures = build_preview(ws.cfg, list(KINDS))
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
            blobs = [(f"{s.kind} preview envelope", b"".join(s.envelope_chunks())) for s in sealed]
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
