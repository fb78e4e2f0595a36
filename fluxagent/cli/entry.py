"""The console scripts' entry points. For the daemon (`fluxagent run`), signals are caught before
anything else is imported (daemon/early.py) and the resident supervisor starts without the typer
app: it imports the standard library only. Every other command goes to the typer app. The docker
credential helper answers `get` from the daemon's memory the same way, without the library stack."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Console script `fluxagent`."""
    from fluxagent.daemon import early

    path = early.daemon_config(sys.argv[1:], os.environ)
    if path is not None:
        early.arm()  # first thing: a stop while starting is a graceful stop
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
