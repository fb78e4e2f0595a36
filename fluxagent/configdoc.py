"""The written forms of the config description in fluxagent/config.py: commented TOML and docs/CONFIG.md.

`fluxagent.example.toml`, docs/CONFIG.md and the config `fluxagent init` writes are rendered here
from the dataclass fields, so none of them can drift from what the loader accepts. Regenerate the
two checked-in files from the repository root with `python -m fluxagent.configdoc --write`
(`--check` exits 1 when they are stale).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from fluxagent import config
from fluxagent.config import Config

EXAMPLE_PATH = Path("fluxagent.example.toml")
REFERENCE_PATH = Path("docs/CONFIG.md")
_WIDTH = 104
_GENERATED = "Generated from fluxagent/config.py by `python -m fluxagent.configdoc --write`; do not edit by hand."

_SYNTAX = [
    "Unknown keys are errors: a typo is reported, never silently ignored.",
    'Durations: a number with a unit: "250ms", "90s", "10m", "6h", "14d", "2w", or combined "1h30m".',
    "Sizes: bytes, or a number with B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).",
    'An empty string ("") leaves an optional path or URL unset.',
]
_EXAMPLE_HEADER = [
    "fluxagent configuration — every key, with its default.",
    "Default location: /etc/fluxagent/fluxagent.toml (or --config PATH, or $FLUXAGENT_CONFIG).",
    *_SYNTAX,
    "Every key's type and range: docs/CONFIG.md.",
]
_INIT_HEADER = [
    "fluxagent configuration, written by `fluxagent init`: every key, with a comment.",
    *_SYNTAX,
    "Every key's type and range: docs/CONFIG.md (packaged: /usr/share/doc/fluxagent/CONFIG.md).",
    "Reload a running agent after a change: systemctl reload fluxagent.",
]


def toml_value(value: Any, *, inline: bool = False) -> str:
    """Return the TOML text of one value (string, integer, boolean or list of them); long lists span lines."""
    if isinstance(value, list):
        items = [toml_value(v) for v in value]
        one_line = "[" + ", ".join(items) + "]"
        if inline or len(one_line) <= 60:
            return one_line
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    text = tomli_w.dumps({"v": value})  # tomli-w knows TOML's string escapes; only the value is kept
    return text.removeprefix("v = ").rstrip("\n")


def _comment(text: str, indent: str = "") -> list[str]:
    return [indent + line for line in textwrap.wrap(text, _WIDTH - 2 - len(indent),
                                                    initial_indent="# ", subsequent_indent="# ",
                                                    break_on_hyphens=False, break_long_words=False)]


def config_text(doc: Mapping[str, Any], header: Sequence[str]) -> str:
    """Return commented TOML for doc (a `config.to_mapping` mapping): every key with its description."""
    defaults = config.to_mapping(Config())
    lines = [line for h in header for line in _comment(h)]
    for name, about, cls in config.sections():
        table: Mapping[str, Any] = doc
        default: Mapping[str, Any] = defaults
        for part in name.split("."):
            table, default = table.get(part, {}), default[part]
        lines += ["", *_comment(about), f"[{name}]"]
        for f, k in config.keys(cls):
            value = table.get(f.name, default[f.name])
            lines += _comment(k.doc + (" Required." if k.required else ""))
            text = f"{f.name} = {toml_value(value)}"
            if k.optional and value == default[f.name]:
                text = "\n".join("# " + line for line in text.split("\n"))
            lines.append(text)
    return "\n".join(lines) + "\n"


def example_mapping() -> dict[str, Any]:
    """Return the example config: every default, and the example value of keys without a usable default."""
    doc = config.to_mapping(Config())
    for name, _, cls in config.sections():
        table = doc
        for part in name.split("."):
            table = table[part]
        for f, k in config.keys(cls):
            if k.example is not None:
                table[f.name] = k.example
    return doc


def example_toml() -> str:
    """Return the text of fluxagent.example.toml."""
    return config_text(example_mapping(), _EXAMPLE_HEADER)


def init_toml(cfg: Config) -> str:
    """Return the commented config `fluxagent init` writes for cfg: the example's comments, cfg's values."""
    return config_text(config.to_mapping(cfg), _INIT_HEADER)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """Return the text of docs/CONFIG.md: per section, a table of every key."""
    defaults = config.to_mapping(Config())
    out = [
        "# Configuration reference",
        "",
        f"<!-- {_GENERATED} -->",
        "",
        "fluxagent reads one TOML file: `/etc/fluxagent/fluxagent.toml`, or the file named by the global option",
        "`--config PATH` or by `$FLUXAGENT_CONFIG`. `fluxagent init` writes one with every key and a comment;",
        "[`fluxagent.example.toml`](../fluxagent.example.toml) is the same file with the defaults. Only",
        "`instance.bound_domain` is required, and `server.vendor_keys` must be filled in before `fluxagent run`.",
        "",
        "Unknown keys, wrong types and bad values are all reported at once, each with the file name and its",
        "dotted path (`fluxagent.toml: schedule.heartbeat: '1x' is not a duration: …`), and the command exits",
        "78. A running agent that is told to reload (SIGHUP) and finds a bad config logs `config.reload_failed`",
        "and keeps the config it has.",
        "",
        *[f"- {line}" for line in _SYNTAX],
    ]
    for name, about, cls in config.sections():
        default: Mapping[str, Any] = defaults
        for part in name.split("."):
            default = default[part]
        out += ["", f"## [{name}]", "", about, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f, k in config.keys(cls):
            shown = "required" if k.required else f"`{_cell(toml_value(default[f.name], inline=True))}`"
            meaning = k.doc
            if k.example is not None:
                meaning += f" Example: `{_cell(toml_value(k.example, inline=True))}`."
            out.append(f"| `{f.name}` | {_cell(k.type.name)} | {shown} | {_cell(meaning)} |")
    return "\n".join(out) + "\n"


def generated_files() -> dict[Path, str]:
    """Return {path relative to the repository root: text} of the files rendered from the config description."""
    return {EXAMPLE_PATH: example_toml(), REFERENCE_PATH: reference_markdown()}


def main(argv: Sequence[str] | None = None) -> int:
    """Write (--write) or check (--check) the generated files under --root; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fluxagent.configdoc", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the files")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file differs from what is generated")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root (default: .)")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in generated_files().items():
        path = args.root / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        else:
            stale.append(str(path))
    if stale:
        print("stale, regenerate with `python -m fluxagent.configdoc --write`: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
