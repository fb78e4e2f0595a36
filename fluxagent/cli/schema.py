"""`fluxagent schema`: the registry versions, the operator's approval, `--diff` and `--approve` (section 11)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fluxagent.cli.app import app, fail
from fluxagent.errors import EXIT_CONFIG, EXIT_OK, ConfigError, FluxError

if TYPE_CHECKING:
    from fluxagent.schema.policy import Approved
    from fluxagent.schema.versions import Catalog, Version


@app.command("schema")
def schema_cmd(
    ctx: typer.Context,
    refs: Annotated[list[str] | None, typer.Argument(
        help="Versions (v2, 2 or a fingerprint): one for --approve, A and B for --diff", show_default=False)] = None,
    approve: Annotated[bool, typer.Option(
        "--approve", help="Approve the newest version, or the one given; writes approved-schema beside the config")]
    = False,
    diff: Annotated[bool, typer.Option(
        "--diff", help="Fields added and removed from A (default: approved) to B (default: running)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    if_missing: Annotated[bool, typer.Option(
        "--if-missing", help="With --approve: only when no approval exists yet (package upgrades)")] = False,
    note: Annotated[str, typer.Option(help="With --approve: why, recorded with the approval")] = "",
    notice: Annotated[bool, typer.Option(
        "--notice", help="Print a short notice only when a wider version awaits approval; always exit 0")] = False,
) -> None:
    """Show what this fluxagent may send: the running and approved registry versions and every field.

    Nothing wider than the approved version is sent; `--diff` shows what approving a newer one adds.
    """
    from fluxagent.schema.approval import approval_path, read_approval
    from fluxagent.schema.approval import approve as do_approve
    from fluxagent.schema.shipped import running, shipped

    config_path: Path = ctx.obj
    path = approval_path(config_path)
    catalog, run = shipped(), running()
    args = list(refs or [])
    if len(args) > (1 if approve else 2 if diff else 0):
        raise typer.BadParameter("too many versions given", param_hint="REFS")
    if approve:
        try:
            done = do_approve(path, catalog, args[0] if args else None, now=int(time.time()), if_missing=if_missing,
                              via="fluxagent schema --approve" + (f": {note}" if note else ""))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="VERSION") from None
        except FluxError as exc:
            raise fail(exc) from None
        except OSError as exc:
            typer.echo(f"fluxagent: cannot write {path}: {exc.strerror or exc} (run it as root: "
                       "`sudo fluxagent schema --approve`)", err=True)
            raise typer.Exit(EXIT_CONFIG) from None
        if done is None:
            typer.echo(f"schema: {path} exists, left untouched")
        else:
            typer.echo(f"approved {done.version.name} ({done.version.fingerprint}) in {path}; the agent records "
                       "it in its ledger the next time it builds a message")
        return
    approved, error = None, None
    try:
        approved = read_approval(path, catalog)
    except ConfigError as exc:
        error = str(exc.problems[0]) + (f" (fix: {exc.hint})" if exc.hint else "")
    if notice:
        _notice(run, approved, error)
        raise typer.Exit(EXIT_OK)
    if diff:
        _diff(catalog, run, approved, args, as_json)
        return
    from fluxagent.report.schema import schema_doc, schema_text

    doc = schema_doc(catalog, run, approved, approval_file=str(path), error=error)
    typer.echo(json.dumps(doc, indent=2) if as_json else schema_text(doc))
    raise typer.Exit(EXIT_CONFIG if approved is None else EXIT_OK)


def _diff(catalog: Catalog, run: Version, approved: Approved | None, args: list[str], as_json: bool) -> None:
    from fluxagent.report.schema import diff_doc, diff_text
    from fluxagent.schema.versions import diff

    picked: list[Version] = []
    for ref in args:
        v = catalog.find(ref)
        if v is None:
            known = ", ".join(x.name for x in catalog.versions)
            raise typer.BadParameter(f"{ref!r} names no schema version this fluxagent knows ({known})",
                                     param_hint="A/B")
        picked.append(v)
    if len(picked) == 2:
        a, b = picked
    else:
        default_a = approved.version if approved is not None else catalog.versions[max(0, run.number - 2)]
        a, b = (picked[0], run) if picked else (default_a, run)
    d = diff(a, b)
    typer.echo(json.dumps(diff_doc(d), indent=2) if as_json else diff_text(d))


def _notice(run: Version, approved: Approved | None, error: str | None) -> None:
    from fluxagent.schema.policy import Policy

    if approved is None:
        typer.echo(f"fluxagent: no usable schema approval, so nothing is sent: {error}")
        return
    policy = Policy(run, approved.version, approved)
    if policy.pending:
        typer.echo(f"fluxagent: schema {run.name} sends {len(policy.withheld)} more field(s) than the approved "
                   f"{approved.version.name}; they are withheld until you approve.\n"
                   "  review: fluxagent schema --diff    approve: sudo fluxagent schema --approve")
