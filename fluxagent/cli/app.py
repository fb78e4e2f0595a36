"""The typer app, its global options, `fail` and config loading; commands live in main.py and updates.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._completion_classes import completion_init  # typer.completion re-exports it implicitly

from fluxagent import __version__
from fluxagent.errors import EXIT_OK, FluxError

if TYPE_CHECKING:
    from fluxagent.config import Config

app = typer.Typer(
    name="fluxagent",
    help="Licensing and telemetry agent of FluxBilling Self-Hosted: sends only what clause 08 allows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Shell completion without typer's --install-completion (which edits the user's shell rc files): the
# bash/zsh/fish scripts the Debian package installs call back `_FLUXAGENT_COMPLETE=complete_<shell> fluxagent`.
completion_init()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fluxagent {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Config file [env FLUXAGENT_CONFIG; default /etc/fluxagent/fluxagent.toml]",
            readable=False,  # the config loader says what is wrong with the file (78), as for FLUXAGENT_CONFIG
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug events too (log.level = debug for this run).")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only (log.level = warning for this run).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options."""
    from fluxagent.config import DEFAULT_PATH
    from fluxagent.logs import LEVEL_ENV

    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet exclude each other", param_hint="-v/-q")
    if verbose or quiet:  # in the environment, so every process this one starts logs at the same level
        os.environ[LEVEL_ENV] = "debug" if verbose else "warning"
    env = os.environ.get("FLUXAGENT_CONFIG", "").strip()
    ctx.obj = Path(config) if config else Path(env) if env else DEFAULT_PATH


def fail(exc: FluxError) -> typer.Exit:
    """Print a FluxError for people on stderr and return the Exit carrying its code."""
    typer.echo(f"fluxagent: {exc.code} error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def load_config(ctx: typer.Context) -> Config:
    """Load the config the global options name; raises ConfigError."""
    from fluxagent import config as config_mod

    return config_mod.load(ctx.obj)


