"""A throw-away workspace (config, identity, sample database, license) for the demo and the tests."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from fluxagent import config
from fluxagent.config import Config
from fluxagent.schema.approval import approval_path, write_approval
from fluxagent.schema.shipped import running
from fluxagent.statedir import identity
from fluxagent.statedir.fsutil import atomic_write
from fluxagent.testing import sample
from fluxagent.testing.licenses import make_license

BOUND_DOMAIN = "billing.example.com"


@dataclass
class Workspace:
    """A demo workspace: its directory, config, vendor keys and sample data."""

    root: Path
    cfg: Config
    vendor_keys: list[nacl.signing.SigningKey]
    data: sample.SampleData


def approve_running(config_path: Path, *, now: int | None = None) -> Path:
    """Approve the running registry version beside config_path, as `fluxagent init` does; return the file."""
    path = approval_path(config_path)
    write_approval(path, running(), by="workspace", via="fluxagent.testing.workspace",
                   now=int(time.time()) if now is None else now)
    return path


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
    root = root.absolute()  # the config names its files by absolute path (relative ones depend on the cwd)
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
    approve_running(cfg_path, now=int(t))
    return Workspace(root, cfg, keys, data)
