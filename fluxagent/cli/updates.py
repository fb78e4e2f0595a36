"""Commands for update credentials and air-gapped exchange: `credentials …`, `export`, `import`.

Registered on the typer app when cli/main.py imports this module. Logs go to stderr here: stdout is the credential
helper protocol channel.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fluxagent.cli.app import app, fail, load_config
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_OK, FluxError

if TYPE_CHECKING:
    from fluxagent.config import Config
    from fluxagent.delivery import Engine
    from fluxagent.updates.credentials import Credential

credentials_app = typer.Typer(
    help="Short-lived update credentials: print them, or act as a docker/git credential helper or apt entry.",
    no_args_is_help=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(credentials_app, name="credentials")


def _credential(ctx: typer.Context, *, quiet: bool = False) -> tuple[Config, Credential]:
    """Load the config, log to stderr (errors only if quiet), obtain fresh credentials; raises FluxError."""
    from fluxagent import logs
    from fluxagent.updates.credentials import obtain

    cfg = load_config(ctx)
    # docker and git run their helpers on every pull and fetch: stderr is for errors, not a log line per call
    logs.configure(cfg.log.format, "error" if quiet else cfg.log.level, stream=sys.stderr)
    return cfg, obtain(cfg, log=logs.get())


def _foreign(ctx: typer.Context, requested: str) -> bool:
    """Return whether the requested host is surely not the vendor's registry (from the state dir; no I/O
    beyond reading the config and one small file; a config error is left for the full path to report)."""
    from fluxagent.updates import helpers as credhelpers
    from fluxagent.updates.credentials import known_registry

    try:
        cfg = load_config(ctx)
    except FluxError:
        return False
    return credhelpers.foreign(requested, cfg.updates.registry or known_registry(cfg.instance.state_dir))


@credentials_app.callback(invoke_without_command=True)
def credentials(ctx: typer.Context) -> None:
    """Request update credentials and print them as JSON (registry, username, secret, expiry)."""
    if ctx.invoked_subcommand is not None:
        return
    from fluxagent.timefmt import utc_iso

    try:
        _, cred = _credential(ctx)
    except FluxError as exc:
        raise fail(exc) from None
    shown = {"registry": cred.registry, "username": cred.username, "secret": cred.secret,
             "expires_at": utc_iso(cred.expires_utc)}
    if sys.stdout.isatty():  # a handover to programs; a terminal would keep the secret in its scrollback
        shown["secret"] = "<not shown on a terminal: pipe the output to a program>"
    typer.echo(json.dumps(shown))


@credentials_app.command("docker")
def docker(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="get, store, erase or list (the docker helper protocol)")],
) -> None:
    """Docker credential helper (install as docker-credential-fluxagent): `get` reads the server on stdin."""
    from fluxagent.updates import helpers as credhelpers

    if action != "get":
        if action in ("store", "erase"):
            sys.stdin.read()
        out, code = credhelpers.docker_other(action)
    elif _foreign(ctx, server := sys.stdin.read()):
        out, code = credhelpers.DOCKER_NOT_FOUND, 1
    else:
        try:
            _, cred = _credential(ctx, quiet=True)
        except FluxError as exc:
            typer.echo(f"fluxagent: {exc.code} error: {exc}")  # docker shows stdout on failure, hint included
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
    from fluxagent.updates import helpers as credhelpers

    request = credhelpers.parse_git_request(sys.stdin)
    if action != "get":
        raise typer.Exit(EXIT_OK)  # nothing is stored, so store and erase have nothing to do
    if not request.get("host") or _foreign(ctx, request["host"]):
        raise typer.Exit(EXIT_OK)  # no answer: git goes on to its next helper
    try:
        _, cred = _credential(ctx, quiet=True)
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(credhelpers.git_get(request, cred), nl=False)


@credentials_app.command("apt")
def apt(
    ctx: typer.Context,
    path: Annotated[Path | None, typer.Option(help="auth.conf.d file [default: updates.apt_auth_file]")] = None,
    cleanup: Annotated[bool, typer.Option(
        "--cleanup", help="Only remove the entry (--path or updates.apt_auth_file) if it has expired")] = False,
) -> None:
    """Write the apt auth.conf.d entry (0600, atomic); --cleanup removes it once expired."""
    from fluxagent.timefmt import utc_iso
    from fluxagent.updates import helpers as credhelpers
    from fluxagent.updates.credentials import monotonic

    try:
        if cleanup:
            cfg = load_config(ctx)
            entry = path or cfg.updates.apt_auth_file  # from root's config or command line, never the state dir
            done = credhelpers.cleanup_apt(cfg.instance.state_dir, entry, monotonic(), credhelpers.boot_id())
            if done.foreign:
                typer.echo(f"the expired record named another file than {entry}: that file was left alone;"
                           " the record was removed")
            elif done.removed:
                typer.echo("apt entry expired and removed")
            elif done.due_in is not None:
                typer.echo(f"apt entry valid for another {int(done.due_in)}s")
            else:
                typer.echo("no apt entry")
            return
        cfg, cred = _credential(ctx)
        target = path or cfg.updates.apt_auth_file
        credhelpers.write_apt(target, cred, cfg.instance.state_dir, credhelpers.boot_id())
        _wake_daemon(cfg)
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(f"apt entry {target} for {cred.registry}, valid until {utc_iso(cred.expires_utc)}")


def _wake_daemon(cfg: Config) -> None:
    """Tell a running daemon that an apt entry was written, so it removes it when due."""
    from fluxagent.updates import client

    with contextlib.suppress(FluxError):
        client.ask(cfg.instance.state_dir, "wake", 5)


def docker_helper_main() -> None:
    """Console script `docker-credential-fluxagent ACTION`: the docker helper under docker's naming."""
    try:
        app(args=["credentials", "docker", *sys.argv[1:]], prog_name="docker-credential-fluxagent")
    except KeyboardInterrupt:
        sys.exit(130)


# ---- air-gapped exchange ----


@contextlib.contextmanager
def _offline_engine(cfg: Config) -> Iterator[Engine]:
    """Yield an Engine for cfg under the instance lock, with a transport that never connects."""
    from fluxagent import logs
    from fluxagent.delivery import Deps, Engine
    from fluxagent.statedir import identity
    from fluxagent.statedir.lock import instance_lock
    from fluxagent.transport import Body, Plain
    from fluxagent.wire.http import HttpResponse, TransportError

    def no_network(url: str, body: Body, *, deadline: float) -> HttpResponse:
        raise TransportError("connect", url, "an offline exchange sends nothing")

    logs.configure(cfg.log.format, cfg.log.level, stream=sys.stderr)
    ident = identity.load(cfg.instance.state_dir)
    with instance_lock(cfg.instance.state_dir):
        yield Engine(cfg, ident, Deps(Plain(no_network), time.time, log=logs.get()))


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Bundle file [default: ./fluxagent-bundle-<UTC time>.json]")
    ] = None,
) -> None:
    """Air-gapped: write a signed bundle of the messages `run` would send, for the vendor to answer."""
    from fluxagent.offline import bundle_chunks, commit_export, prepare_export
    from fluxagent.statedir.fsutil import atomic_write
    from fluxagent.timefmt import utc_iso

    try:
        cfg = load_config(ctx)
        now = time.time()
        target = output or Path(f"fluxagent-bundle-{utc_iso(int(now)).replace(':', '')}.json")
        with _offline_engine(cfg) as engine:
            bundle, entries = prepare_export(engine, now)
            try:
                atomic_write(target.absolute(), bundle_chunks(bundle), mode=0o640)
            except OSError as exc:
                raise FluxError(f"cannot write the bundle {target}: {exc.strerror or exc}") from None
            commit_export(engine, entries, now, str(target))
            failures = dict(engine.source_errors)
    except FluxError as exc:
        raise fail(exc) from None
    kinds = ", ".join(f"{e.kind} (seq {e.seq})" for e in entries) or "nothing"
    typer.echo(f"bundle {target}: {kinds}")
    for kind, why in failures.items():
        typer.echo(f"fluxagent: {kind} not exported: {why}", err=True)
    raise typer.Exit(EXIT_CHECK_FAILED if failures else EXIT_OK)


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    answer: Annotated[Path, typer.Argument(help="The vendor's signed answer to an exported bundle")],
) -> None:
    """Air-gapped: verify the vendor's answer, record its receipts and install a renewed license file."""
    import hashlib

    from fluxagent.offline import MAX_ANSWER_BYTES, ImportRefused, import_answer

    try:
        cfg = load_config(ctx)
        try:
            with answer.open("rb") as f:
                data = f.read(MAX_ANSWER_BYTES + 1)
        except OSError as exc:
            raise FluxError(f"cannot read the answer {answer}: {exc.strerror or exc}") from None
        with _offline_engine(cfg) as engine:
            now = time.time()
            try:
                result = import_answer(engine, data, now)
            except ImportRefused as exc:
                engine.ledger.append(now=int(now), event="refused", kind="answer", outcome="refused",
                                     payload_sha256=hashlib.sha256(data).hexdigest(), detail=exc.message)
                raise
    except FluxError as exc:
        raise fail(exc) from None
    for p, d in result.delivered:
        extra = f": license {d.receipt_body.get('state')}" if p.kind == "license" else ""
        typer.echo(f"{p.kind} (seq {p.seq}) delivered{extra}")
    for p, _code, why in result.rejected:
        typer.echo(f"{p.kind} (seq {p.seq}) rejected by the server: {why}")
    for why in result.bad:
        typer.echo(f"fluxagent: receipt refused: {why}", err=True)
    for why in result.damaged:
        typer.echo(f"fluxagent: {why}", err=True)
    if result.unknown:
        typer.echo(f"{result.unknown} receipt(s) for requests not waiting here (already imported?) ignored")
    if result.license_installed:
        typer.echo(result.license_installed)
    raise typer.Exit(EXIT_CHECK_FAILED if result.bad or result.rejected or result.damaged else EXIT_OK)
