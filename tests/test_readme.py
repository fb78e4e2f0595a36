"""The README's "what is sent" table is the allowlist registry, rendered."""

from __future__ import annotations

import re
from pathlib import Path

from fluxagent.report.schema import registry_block
from fluxagent.schema.shipped import running
from fluxagent.wire import messages

README = Path(__file__).resolve().parent.parent / "README.md"


def _block() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- registry:begin -->\n(.*?)\n<!-- registry:end -->", text, re.S)
    assert m, "README lacks the registry markers"
    return m.group(1)


def test_readme_table_equals_the_registry_rendering_and_names_its_schema_version() -> None:
    assert _block() == registry_block(running())
    assert f"Schema **v{running().number}**" in _block()


def test_every_registry_field_appears_in_the_readme_table() -> None:
    block = _block()
    for f in messages.REGISTRY:
        path = f.path if f.kind == "*" else f"body.{f.path}"
        assert f"`{path}`" in block
        assert f.item in block


def test_readme_shows_the_two_newcomer_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "fluxagent demo" in text
    assert "python -m pytest" in text
