"""Commands for update credentials and air-gapped exchange: `credentials …`, `export`, `import`.

Registered on the main typer app by cli.py. Logs go to stderr here: stdout is the credential
helper protocol channel.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fluxagent.cli import _load, app, fail
from fluxagent.errors import EXIT_OK, FluxError

if TYPE_CHECKING:
    from fluxagent.config import Config
    from fluxagent.credentials import Credential

credentials_app = typer.Typer(
    help="Short-lived update credentials: print them, or act as a docker/git credential helper or apt entry.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(credentials_app, name="credentials")


def _credential(ctx: typer.Context) -> tuple[Config, Credential]:
    """Load the config, log to stderr, and obtain fresh credentials; raises FluxError."""
    from fluxagent import logs
    from fluxagent.credentials import obtain

    cfg = _load(ctx)
    logs.configure(cfg.log.format, cfg.log.level, stream=sys.stderr)
    return cfg, obtain(cfg, log=logs.get())


@credentials_app.callback(invoke_without_command=True)
def credentials(ctx: typer.Context) -> None:
    """Request update credentials and print them as JSON (registry, username, secret, expiry)."""
    if ctx.invoked_subcommand is not None:
        return
    from fluxagent.credentials import utc_text

    try:
        _, cred = _credential(ctx)
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(json.dumps({"registry": cred.registry, "username": cred.username, "secret": cred.secret,
                           "expires_at": utc_text(cred.expires_utc)}))


@credentials_app.command("docker")
def docker(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="get, store, erase or list (the docker helper protocol)")],
) -> None:
    """Docker credential helper (install as docker-credential-fluxagent): `get` reads the server on stdin."""
    from fluxagent import credhelpers

    if action != "get":
        if action in ("store", "erase"):
            sys.stdin.read()
        out, code = credhelpers.docker_other(action)
    else:
        server = sys.stdin.read()
        try:
            _, cred = _credential(ctx)
        except FluxError as exc:
            typer.echo(f"fluxagent: {exc.code} error: {exc.message}")  # docker shows stdout on failure
            raise typer.Exit(exc.exit_code) from None
        out, code = credhelpers.docker_get(server, cred)
    if out:
        typer.echo(out)
    raise typer.Exit(code)


@credentials_app.command("git")
def git(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="get, store or erase (the git credential helper protocol)")],
) -> None:
    """Git credential helper: `get` answers username, password and password_expiry_utc."""
    from fluxagent import credhelpers

    request = credhelpers.parse_git_request(sys.stdin)
    if action != "get":
        raise typer.Exit(EXIT_OK)  # nothing is stored, so store and erase have nothing to do
    if not request.get("host"):
        raise typer.Exit(EXIT_OK)  # no host, no answer: git goes on to its next helper
    try:
        _, cred = _credential(ctx)
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(credhelpers.git_get(request, cred), nl=False)


@credentials_app.command("apt")
def apt(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Option(help="auth.conf.d file [default: updates.apt_auth_file]")] = None,
    cleanup: Annotated[bool, typer.Option("--cleanup", help="Only remove the entry if it has expired")] = False,
) -> None:
    """Write the apt auth.conf.d entry (0600, atomic); --cleanup removes it once expired."""
    from fluxagent import credhelpers
    from fluxagent.credentials import monotonic, utc_text

    try:
        if cleanup:
            cfg = _load(ctx)
            done = credhelpers.cleanup_apt(cfg.instance.state_dir, monotonic(), credhelpers.boot_id())
            if done.removed:
                typer.echo("apt entry expired and removed")
            elif done.due_in is not None:
                typer.echo(f"apt entry valid for another {int(done.due_in)}s")
            else:
                typer.echo("no apt entry")
            return
        cfg, cred = _credential(ctx)
        target = path or cfg.updates.apt_auth_file
        credhelpers.write_apt(target, cred, cfg.instance.state_dir, credhelpers.boot_id())
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(f"apt entry {target} for {cred.registry}, valid until {utc_text(cred.expires_utc)}")


def docker_helper_main() -> None:
    """Console script `docker-credential-fluxagent ACTION`: the docker helper under docker's naming."""
    try:
        app(args=["credentials", "docker", *sys.argv[1:]], prog_name="docker-credential-fluxagent")
    except KeyboardInterrupt:
        sys.exit(130)
