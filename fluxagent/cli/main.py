"""The command-line interface: the only place that prints and picks exit codes (docs/OPERATOR.md, "Commands").

Modules a command needs are imported inside it, so `fluxagent --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fluxagent.cli import schema, updates  # register `schema`; `credentials`, `export`, `import` on app
from fluxagent.cli.app import app, fail, load_config
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError, FluxError, oserror_exit_code
from fluxagent.kinds import KINDS

if TYPE_CHECKING:
    from fluxagent.config import Config

__all__ = ["app", "main", "schema", "updates"]


@app.command()
def init(
    ctx: typer.Context,
    bound_domain: Annotated[
        str | None, typer.Option(help="Domain the license is bound to [default: this host's FQDN]")
    ] = None,
    server_url: Annotated[str | None, typer.Option(help="Licensing server URL")] = None,
    vendor_key: Annotated[
        list[str] | None, typer.Option(help="Pinned vendor public key (base64); repeat for each")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="State directory")] = None,
    database: Annotated[str | None, typer.Option(help="Platform database URL")] = None,
    license_file: Annotated[Path | None, typer.Option(help="License file path")] = None,
) -> None:
    """Write a config if none exists and create the instance identity. Never replaces either."""
    import time

    from fluxagent import config as config_mod
    from fluxagent.cli.main import write_initial_config
    from fluxagent.statedir import identity
    from fluxagent.statedir.owner import identity_owner

    path: Path = ctx.obj
    try:
        if path.exists():
            cfg = config_mod.load(path)
            typer.echo(f"config: {path} exists, left untouched")
        else:
            try:
                cfg = write_initial_config(
                    path,
                    bound_domain=bound_domain,
                    server_url=server_url,
                    vendor_keys=vendor_key or [],
                    state_dir=state_dir,
                    database=database,
                    license_file=license_file,
                )
            except PermissionError as exc:
                raise ConfigError([f"{path}: cannot write the config: {exc.strerror}"],
                                hint="write the config as root: `sudo fluxagent init …` (as root, init also"
                                " creates the identity for the service user)") from exc
            typer.echo(f"config: wrote {path}")
        sd = cfg.instance.state_dir
        owner = identity_owner(cfg.instance.service_user, sd, str(cfg.source or path))
        now = int(time.time())
        if owner is None:
            ident, created = identity.ensure(sd, now=now)
            iid, whose = ident.instance_id, ""
        else:
            iid, created = identity.ensure_for(sd, now=now, owner=owner[:2])
            whose = f", owned by {owner[2]} (the service user)"
        approved = approve_on_init(path, now)
    except FluxError as exc:
        raise fail(exc) from None
    except OSError as exc:
        typer.echo(f"fluxagent: cannot write {exc.filename}: {exc.strerror}", err=True)
        raise typer.Exit(oserror_exit_code(exc)) from None
    state = ", ".join(created) if created else "nothing (identity already present)"
    typer.echo(f"identity: instance {iid} in {sd}{whose}; created {state}")
    typer.echo(approved)
    if not cfg.server.vendor_keys:
        typer.echo("note: server.vendor_keys is empty; add the vendor's public keys before `fluxagent run`")


@app.command()
def preview(
    ctx: typer.Context,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable): " + ", ".join(KINDS))
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per message")] = False,
) -> None:
    """Show exactly what would be sent. Sends nothing, writes nothing, does not advance seq."""
    from fluxagent.collect import preview as build
    from fluxagent.report.preview import pending_note, preview_json, preview_text

    kinds = _kinds(kind)
    try:
        cfg = load_config(ctx)
        p = build(cfg, kinds)
    except FluxError as exc:
        raise fail(exc) from None
    sealed, failures = p.sealed, p.failures
    if as_json:
        out = sys.stdout.buffer
        # streamed: a large digest is never whole
        for chunk in preview_json(sealed, cfg.server.url, withheld=p.withheld, policy=p.policy):
            out.write(chunk)
        out.flush()
        if p.policy.pending:
            typer.echo(f"fluxagent: {pending_note(p.policy)}", err=True)
    else:
        typer.echo(preview_text(sealed, cfg.server.url, withheld=p.withheld, policy=p.policy))
    for k, err in failures:
        typer.echo(f"fluxagent: {k} would not be sent: {err.code} error: {err}", err=True)
    # the first failure's own exit code: 69 database unreachable, 78 credentials/settings, 1 query
    raise typer.Exit(failures[0][1].exit_code if failures else EXIT_OK)


def _kinds(kind: list[str] | None) -> list[str]:
    if not kind:
        return list(KINDS)
    bad = [k for k in kind if k not in KINDS]
    if bad:
        raise typer.BadParameter(f"unknown kind {bad[0]!r}; choose from {', '.join(KINDS)}", param_hint="--kind")
    return list(dict.fromkeys(kind))


@app.command()
def run(
    ctx: typer.Context,
    once: Annotated[
        bool,
        typer.Option("--once", help="One full cycle, then exit: 0 all delivered, 69 server unavailable, 1 otherwise"),
    ] = False,
) -> None:
    """Run the agent (the systemd service), or one full cycle with --once."""
    from fluxagent.daemon.agent import run as run_agent

    try:
        code = run_agent(ctx.obj, once=once)
    except FluxError as exc:
        raise fail(exc) from None
    raise typer.Exit(code)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show license state, last deliveries, next due times, spool depth and drop counters."""
    import json

    from fluxagent.report.status import status_text
    from fluxagent.status import collect_status

    try:
        st = collect_status(load_config(ctx))
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(json.dumps(st, indent=2, sort_keys=True) if as_json else status_text(st))


@app.command("log")
def log_cmd(
    ctx: typer.Context,
    entry: Annotated[int | None, typer.Argument(help="Show this entry in full, with its exact payload")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Check the hash chain; exit 1 where it breaks")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    limit: Annotated[int, typer.Option(help="Newest entries to list")] = 50,
) -> None:
    """List what left the machine (the hash-chained ledger), show one entry, or verify the chain."""
    import json
    from dataclasses import asdict

    from fluxagent.report.log import ledger_entry_text, ledger_lines
    from fluxagent.statedir.ledger import Ledger

    try:
        cfg = load_config(ctx)
        ledger = Ledger(cfg.instance.state_dir / "ledger", readonly=True)
        if verify:
            res = ledger.verify()
            if as_json:
                typer.echo(json.dumps(asdict(res), indent=2))
            elif res.ok:
                typer.echo(
                    f"ledger ok: {res.checked} entries, hash chain intact" + (f" ({res.note})" if res.note else "")
                )
            else:
                typer.echo(f"ledger BROKEN: {res.reason} (checked {res.checked} entries before it)")
            raise typer.Exit(EXIT_OK if res.ok else EXIT_CHECK_FAILED)
        if entry is not None:
            e = ledger.get(entry)
            if e is None:
                typer.echo(f"fluxagent: no ledger entry {entry}", err=True)
                raise typer.Exit(EXIT_CHECK_FAILED)
            typer.echo(json.dumps(e.as_dict(), indent=2, sort_keys=True) if as_json else ledger_entry_text(e))
            return
        newest = []
        for e in ledger.entries(reverse=True):
            newest.append(e)
            if len(newest) >= limit:
                break
        newest.reverse()
        if as_json:
            typer.echo(json.dumps([e.as_dict() for e in newest], indent=2, sort_keys=True))
        else:
            typer.echo(ledger_lines(newest))
    except FluxError as exc:
        raise fail(exc) from None


@app.command()
def validate(
    ctx: typer.Context,
    offline: Annotated[bool, typer.Option("--offline", help="Skip the network checks and the live license check")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Check config, identity, license file, database, clock, network path and one live license check.

    Exit codes: 0 all ok, 1 a check failed, 69 server unreachable, 78 configuration or identity error.
    """
    import json

    from fluxagent.validate.check import exit_code
    from fluxagent.validate.run import run_checks

    checks = []
    for check in run_checks(ctx.obj, offline=offline):
        checks.append(check)
        if not as_json:
            typer.echo(f"{check.level:<5} {check.name:<15} {check.reason}")
            if check.fix and check.level in ("warn", "fail"):
                typer.echo(f"{'':<21} fix: {check.fix}")
    code = exit_code(checks)
    if as_json:
        typer.echo(json.dumps({"checks": [c.as_dict() for c in checks], "exit_code": code}, indent=2))
    raise typer.Exit(code)


@app.command("check-config")
def check_config(ctx: typer.Context) -> None:
    """Check the config file alone and exit: 0 it loads, 78 it does not (the unit's ExecReload runs this first).

    Fast and read-only: it loads no identity, opens no state, database or network.
    """
    try:
        load_config(ctx)
    except FluxError as exc:
        raise fail(exc) from None
    typer.echo(f"config {ctx.obj}: ok")


@app.command()
def demo(
    workspace: Annotated[Path | None, typer.Option(help="Keep the workspace here instead of a temp dir")] = None,
    database: Annotated[str | None, typer.Option(
        help="Fill this EMPTY postgresql:// or mysql:// database with the sample instead of a SQLite file")] = None,
) -> None:
    """Run fluxagent end to end on a throw-away sample platform and check nothing personal leaves."""
    from fluxagent.demo import run_demo

    try:
        code = run_demo(workspace, typer.echo, database)
    except FluxError as exc:
        raise fail(exc) from None
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


def approve_on_init(config_path: Path, now: int) -> str:
    """Approve the running registry version beside a new install's config; keep an existing approval.

    Returns the line init prints. An existing approval file is never replaced, even a bad one (the
    commands that use it say what is wrong); `fluxagent schema --approve` is the way to change it.
    Not being allowed to write it (the service user beside root's config) is said, not fatal.
    """
    from fluxagent.schema.approval import approval_path, who, write_approval
    from fluxagent.schema.shipped import running

    target = approval_path(config_path)
    if os.path.lexists(target):
        return f"schema: {target} exists, left untouched (see `fluxagent schema`)"
    version = running()
    try:
        write_approval(target, version, by=who(), via="fluxagent init", now=now)
    except OSError as exc:  # e.g. the service user, who may not write beside root's config
        return (f"schema: cannot write {target} ({exc.strerror or exc}); nothing is sent until root runs "
                "`fluxagent schema --approve` (see `fluxagent schema`)")
    return (f"schema: approved {version.name} ({version.fingerprint}) in {target}; "
            "`fluxagent schema` shows what it sends")


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
    """Validate the init options, write them as a commented TOML config (0640) and return the Config."""
    from fluxagent import config, configdoc
    from fluxagent.sources.host import fqdn
    from fluxagent.statedir.fsutil import atomic_write

    doc = config.to_mapping(config.Config())
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
    cfg = config.from_mapping(doc, Path("--options"))  # validate the options before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, configdoc.init_toml(cfg).encode(), mode=0o640, exclusive=True)
    except FileExistsError:
        raise ConfigError([f"{path}: appeared while init was running; left untouched"]) from None
    return config.load(path)
