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


def test_readme_is_a_front_door_of_at_most_10_kb() -> None:
    assert len(README.read_bytes()) <= 10 * 1024


def test_readme_test_command_is_the_one_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    ran = [line.strip() for line in ci.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")]
    assert ran == [".venv/bin/python -m pytest -q"]
    assert "&& .venv/bin/python -m pytest -q\n" in readme


def _anchors(page: Path) -> set[str]:
    """Return the heading anchors of a Markdown page, made as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_and_docs_link_only_to_files_and_headings_that_exist() -> None:
    for page in (README, *sorted((README.parent / "docs").glob("*.md"))):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target:
                continue
            linked = (page.parent / target) if target else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name} links to {target}#{anchor}: no such heading"


def test_code_refers_to_docs_in_the_repository_never_to_an_outside_design_document() -> None:
    root = README.parent
    found = [f"{path.relative_to(root)}:{n}"
             for top in ("fluxagent", "tests", "bench", "packaging", ".ci")
             for path in sorted((root / top).rglob("*")) if path.is_file() and path.suffix != ".pyc"
             for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if re.search(r"DESIGN(\.md| §)", line) and path.name != "test_readme.py"]
    assert found == [], "point these at docs/ARCHITECTURE.md, docs/PROTOCOL.md, docs/OPERATOR.md or docs/CONFIG.md"
