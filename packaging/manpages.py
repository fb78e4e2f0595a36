"""Write the man pages of fluxagent from its command tree: fluxagent(1) and one page per subcommand.

Run by packaging/build-deb.sh with the package's own interpreter, so the pages describe exactly the
commands and options that ship (they cannot drift from the code):

    python manpages.py OUTDIR          # OUTDIR/fluxagent.1, OUTDIR/fluxagent-run.1, ...

The date in each page's header is SOURCE_DATE_EPOCH's (reproducible builds), else today's.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main
from typer.core import TyperArgument, TyperGroup

from fluxagent import __version__
from fluxagent.cli.main import app
from fluxagent.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

EXIT_STATUS = (
    (EXIT_OK, "success"),
    (EXIT_CHECK_FAILED, "a check failed (validate, log --verify, status of a failing agent)"),
    (EXIT_USAGE, "wrong usage: an unknown command or option, a missing argument"),
    (EXIT_UNAVAILABLE, "the licensing server could not be reached (the message stays spooled)"),
    (EXIT_LOCKED, "another fluxagent process holds the state directory's lock"),
    (EXIT_CONFIG, "the configuration or the identity is invalid (restarting cannot fix it)"),
)
FILES = (
    ("/etc/fluxagent/fluxagent.toml", "the configuration (see /usr/share/doc/fluxagent/examples/fluxagent.toml)"),
    ("/var/lib/fluxagent/", "the state directory: identity, spool, ledger, license status, metrics.prom"),
    ("/usr/share/doc/fluxagent/", "the operator guide, the protocol and the examples"),
)


def roff(text: str) -> str:
    """Return text escaped for roff: backslashes, and a leading dot or quote that would read as a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in out.splitlines())


# typer vendors a trimmed click (no Group, no Argument): the command tree is made of typer.core's classes.
Command = Any


def subcommands(cmd: Command) -> list[tuple[str, Command]]:
    """Return the visible (name, subcommand) pairs of a group, in name order ([] for a command)."""
    if not isinstance(cmd, TyperGroup):
        return []
    return [(name, sub) for name, sub in sorted(cmd.commands.items()) if not sub.hidden]


def walk(cmd: Command, ctx: typer.Context) -> Iterator[tuple[Command, typer.Context]]:
    """Yield (command, its context) for cmd and every subcommand below it, in name order."""
    yield cmd, ctx
    for name, sub in subcommands(cmd):
        yield from walk(sub, typer.Context(sub, info_name=name, parent=ctx))


def page_name(path: tuple[str, ...]) -> str:
    """Return the man page name of a command path: ("fluxagent", "log") → "fluxagent-log"."""
    return "-".join(path)


def _options(cmd: Command, ctx: typer.Context) -> list[str]:
    lines: list[str] = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or isinstance(param, TyperArgument):
            continue
        spec, help_text = record
        lines += [".TP", f"\\fB{roff(spec)}\\fR", roff(help_text or "")]
    return lines


def _arguments(cmd: Command) -> list[str]:
    lines: list[str] = []
    for param in cmd.params:
        if isinstance(param, TyperArgument):
            help_text = getattr(param, "help", None) or ""
            lines += [".TP", f"\\fI{roff(param.human_readable_name)}\\fR", roff(help_text)]
    return lines


def render(cmd: Command, ctx: typer.Context, date: str) -> str:
    """Return the roff source of the page for the command of ctx (pure)."""
    path = tuple(ctx.command_path.split())
    name = page_name(path)
    subs = subcommands(cmd)
    short = (cmd.get_short_help_str(limit=200) or name).rstrip(".")
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines = [
        f'.TH "{name.upper()}" "1" "{date}" "fluxagent {__version__}" "FluxBilling Self-Hosted"',
        ".SH NAME", f"{roff(name)} \\- {roff(short[0].lower() + short[1:])}",
        ".SH SYNOPSIS", f"\\fB{roff(' '.join(path))}\\fR {roff(usage)}",
        ".SH DESCRIPTION", roff(cmd.help or short),
    ]
    if len(path) > 1:
        lines += [".PP", "The global options of \\fBfluxagent\\fR(1), such as \\fB\\-\\-config\\fR, come before the "
                  "command name."]
    args = _arguments(cmd)
    if args:
        lines += [".SH ARGUMENTS", *args]
    opts = _options(cmd, ctx)
    if opts:
        lines += [".SH OPTIONS", *opts]
    if subs:
        lines += [".SH COMMANDS"]
        for sub_name, sub in subs:
            lines += [".TP", f"\\fB{roff(sub_name)}\\fR", roff(sub.get_short_help_str(limit=200))]
    lines += [".SH EXIT STATUS"]
    for code, meaning in EXIT_STATUS:
        lines += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    if len(path) == 1:
        lines += [".SH ENVIRONMENT", ".TP", "\\fBFLUXAGENT_CONFIG\\fR",
                  "the config file, unless \\fB\\-\\-config\\fR names one", ".SH FILES"]
        for file, what in FILES:
            lines += [".TP", f"\\fI{roff(file)}\\fR", roff(what)]
    see = ["fluxagent(1)"] if len(path) > 1 else []
    see += [f"{page_name((*path, s))}(1)" for s, _ in subs]
    if see:
        lines += [".SH SEE ALSO", ", ".join(f"\\fB{roff(s.split('(')[0])}\\fR({s.split('(')[1]}" for s in see)]
    return "\n".join(lines) + "\n"


def write_all(outdir: Path, date: str) -> list[Path]:
    """Write one page per command of the fluxagent CLI into outdir; return the files written."""
    root = typer.main.get_command(app)
    written = []
    for cmd, ctx in walk(root, typer.Context(root, info_name="fluxagent")):
        target = outdir / f"{page_name(tuple(ctx.command_path.split()))}.1"
        target.write_text(render(cmd, ctx, date), encoding="utf-8")
        written.append(target)
    return written


def main() -> None:
    """Write the pages into the directory named by the first argument."""
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(stamp))
    for path in write_all(outdir, date):
        print(path.name)


if __name__ == "__main__":
    main()
