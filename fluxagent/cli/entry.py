"""The console script `fluxagent`: for the daemon (`fluxagent run`), signals are caught before
anything else is imported (daemon/early.py), then the typer app parses argv."""

from __future__ import annotations

import sys


def main() -> None:
    """Console script `fluxagent`."""
    from fluxagent.daemon import early

    early.arm_for(sys.argv[1:])  # first thing: importing the rest takes a noticeable fraction of a second
    from fluxagent.cli.main import main as cli_main

    cli_main()
