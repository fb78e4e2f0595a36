"""Command bodies that are more than glue: they return values, cli.py prints them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fluxagent import collect, config, identity
from fluxagent.config import Config
from fluxagent.errors import ConfigError, FluxError
from fluxagent.fsutil import atomic_write
from fluxagent.messages import Sealed


def write_initial_config(
    path: Path,
    *,
    bound_domain: str | None,
    server_url: str | None,
    vendor_keys: list[str],
    state_dir: Path | None,
    database: str | None,
    license_file: Path | None,
) -> Config:
    """Validate the init options, write them as a TOML config (0640) and return the Config."""
    import tomli_w

    from fluxagent.sources.host import fqdn

    defaults = config.to_mapping(Config())
    doc = defaults
    doc["instance"]["bound_domain"] = bound_domain or fqdn()
    if state_dir:
        doc["instance"]["state_dir"] = str(state_dir.absolute())
    if license_file:
        doc["instance"]["license_file"] = str(license_file.absolute())
    if server_url:
        doc["server"]["url"] = server_url
    doc["server"]["vendor_keys"] = list(vendor_keys)
    if database:
        doc["platform"]["database"] = database
    config.from_mapping(doc, Path("--options"))  # validate the options before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, tomli_w.dumps(doc).encode(), mode=0o640, exclusive=True)
    except FileExistsError:
        raise ConfigError([f"{path}: appeared while init was running; left untouched"]) from None
    return config.load(path)


def last_seq(state_dir: Path) -> int:
    """Return the last seq used (0 if none); read-only; raises StateError if the file is corrupt."""
    from fluxagent.state import Seq

    return Seq(state_dir).last()


def build_preview(
    cfg: Config, kinds: list[str], *, world: collect.World | None = None, now: float | None = None
) -> tuple[list[Sealed], list[tuple[str, FluxError]]]:
    """Build and seal the kinds from live sources without writing anything; return sealed + failures."""
    ident = identity.load(cfg.instance.state_dir)
    t = time.time() if now is None else now
    built = collect.gather(cfg, ident, kinds, now=t, world=world)
    sealed = collect.seal_all(built, ident, aud=cfg.server.audience,
                              first_seq=last_seq(cfg.instance.state_dir) + 1, now=int(t), nonce=os.urandom)
    failures = [(b.kind, b.error) for b in built if b.error is not None]
    return sealed, failures
