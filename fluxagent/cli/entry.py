"""The console scripts' entry points: `fluxagent run` goes to the supervisor before anything else
is imported (the resident process imports the standard library only); every other command goes
to the typer app. The docker credential helper answers from the daemon's memory the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/fluxagent/fluxagent.toml"


def daemon_config(argv: list[str], env: dict[str, str] | os._Environ[str]) -> Path | None:
    """Return the config path when argv is exactly `[--config PATH | -c PATH] run`, else None
    (then the typer app parses argv: `run --once`, `--help`, and every usage error)."""
    config: str | None = None
    args = list(argv)
    while args and args[0] != "run":
        opt = args.pop(0)
        if opt in ("--config", "-c") and args:
            config = args.pop(0)
        elif opt.startswith("--config="):
            config = opt.partition("=")[2]
        else:
            return None
    if args != ["run"]:
        return None
    chosen = config or env.get("FLUXAGENT_CONFIG", "").strip() or DEFAULT_CONFIG
    return Path(chosen)


def main() -> None:
    """Console script `fluxagent`."""
    path = daemon_config(sys.argv[1:], os.environ)
    if path is not None:
        from fluxagent.daemon import supervisor

        sys.exit(supervisor.run(path))
    from fluxagent.cli.main import main as cli_main

    cli_main()


def docker_helper_main() -> None:
    """Console script `docker-credential-fluxagent ACTION`: `get` from the daemon's memory when one
    runs (no third-party import on that path); everything else through the typer app."""
    if sys.argv[1:] == ["get"]:
        from fluxagent.updates.fastpath import docker_get_from_daemon

        code = docker_get_from_daemon(sys.stdin, sys.stdout, os.environ)
        if code is not None:
            sys.exit(code)
    from fluxagent.cli.updates import docker_helper_main as typer_helper

    typer_helper()
