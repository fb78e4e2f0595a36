"""The package's shape (docs/ARCHITECTURE.md): no import circles, imports only point down, pure modules do no I/O.

The graph is read from the source with `ast`, lazy imports inside functions included: an import
circle hidden in a function body is still a circle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fluxagent"

# Lowest first; a module may import its own package or any package listed before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fluxagent", "fluxagent.errors", "fluxagent.kinds", "fluxagent.facts", "fluxagent.timefmt"),
    ("fluxagent.identifiers",),
    ("fluxagent.configvalues",),
    ("fluxagent.config", "fluxagent.configdoc"),
    ("fluxagent.logfmt",),
    ("fluxagent.logs",),
    ("fluxagent.wire",),
    ("fluxagent.transport",),
    ("fluxagent.statedir",),
    ("fluxagent.schema",),
    ("fluxagent.license",),
    ("fluxagent.sources",),
    ("fluxagent.collect",),
    ("fluxagent.report",),
    ("fluxagent.status",),
    ("fluxagent.delivery",),
    ("fluxagent.updates",),
    ("fluxagent.offline",),
    ("fluxagent.validate",),
    ("fluxagent.daemon",),
    ("fluxagent.testing",),
    ("fluxagent.demo",),
    ("fluxagent.diagnostics",),
    ("fluxagent.cli", "fluxagent.__main__"),
)
# Pure modules take the outside world as arguments: none of them may import one that does I/O.
PURE = ("fluxagent.wire", "fluxagent.identifiers", "fluxagent.license.state", "fluxagent.license.file",
        "fluxagent.report", "fluxagent.schema.versions", "fluxagent.schema.policy",
        "fluxagent.kinds", "fluxagent.facts", "fluxagent.errors", "fluxagent.timefmt")
IO_LIBRARIES = ("httpx", "psutil", "sqlite3", "psycopg", "pymysql", "subprocess", "fcntl", "selectors", "structlog")


def module_files(root: Path) -> dict[str, Path]:
    """Return {dotted module name: file} for every .py file under root (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, modules: Iterable[str]) -> tuple[set[str], set[str], set[str]]:
    """Return (project modules imported, the runtime ones among them, external top-level names) of one module."""
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    alls: set[str] = set()
    runtime: set[str] = set()
    external: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("fluxagent"):
                if node.lineno not in type_only:
                    external.add(target.split(".")[0])
                continue
            found = resolve(target)
            # a module importing a package it lives in is not an edge (Python loads that package first anyway)
            if found is None or found == name or name.startswith(found + "."):
                continue
            alls.add(found)
            if node.lineno not in type_only:
                runtime.add(found)
    return alls, runtime, external


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """Return the import graph of the package at root: all edges, runtime edges, external imports."""
    files = module_files(root)
    alls, runtime, external = {}, {}, {}
    for name, path in files.items():
        alls[name], runtime[name], external[name] = imports_of(name, path, files)
    return alls, runtime, external


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan), or self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    """Return the index of the layer holding module (by longest matching prefix)."""
    best, best_len = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def package_of(module: str) -> str:
    """Return the room a module lives in: fluxagent.<first part>."""
    return ".".join(module.split(".")[:2])


def upward(edges: Mapping[str, set[str]]) -> list[str]:
    """Return the edges that point to a higher layer than their source."""
    return [f"{a} -> {b}" for a in sorted(edges) for b in sorted(edges[a])
            if package_of(a) != package_of(b) and layer_of(b) > layer_of(a)]


def impure(runtime: Mapping[str, set[str]], external: Mapping[str, set[str]]) -> list[str]:
    """Return the imports by which a pure module reaches a module or library that does I/O."""
    def pure(m: str) -> bool:
        return any(m == p or m.startswith(p + ".") for p in PURE)
    bad = [f"{a} -> {b}" for a in sorted(runtime) if pure(a) for b in sorted(runtime[a]) if not pure(b)]
    bad += [f"{a} -> {lib}" for a in sorted(external) if pure(a) for lib in sorted(external[a])
            if lib in IO_LIBRARIES]
    return bad


ALL, RUNTIME, EXTERNAL = graph(PACKAGE)


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in ALL if layer_of(m) < 0] == []


def test_the_package_has_no_import_circles_lazy_imports_included() -> None:
    assert cycles(ALL) == []


def test_imports_only_point_down_the_layers() -> None:
    assert upward(ALL) == []


def test_pure_modules_import_no_module_that_does_io() -> None:
    assert impure(RUNTIME, EXTERNAL) == []


def test_the_checker_finds_a_planted_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above are only worth something if they can fail: plant both faults in a copy."""
    pkg = tmp_path / "fluxagent"
    (pkg / "wire").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "wire" / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from fluxagent.wire import messages  # lazy\n")
    (pkg / "wire" / "messages.py").write_text("from fluxagent import config\nimport httpx\n")
    alls, runtime, external = graph(pkg)
    assert cycles(alls) == [["fluxagent.config", "fluxagent.wire.messages"]]
    assert "fluxagent.config -> fluxagent.wire.messages" in upward(alls)
    assert impure(runtime, external) == ["fluxagent.wire.messages -> fluxagent.config",
                                         "fluxagent.wire.messages -> httpx"]


@pytest.mark.parametrize("shipped", ["dbservers"])
def test_test_only_helpers_do_not_ship(shipped: str) -> None:
    assert not list(PACKAGE.rglob(f"{shipped}.py"))


def test_the_architecture_layout_has_one_line_per_room_and_no_other() -> None:
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    layout = text.split("## The layout", 1)[1].split("\n## ", 1)[0]
    shown = set(re.findall(r"^\| `(\w+(?:\.py|/))` \|", layout, re.M))
    rooms = {package_of(m).removeprefix("fluxagent.") for m in ALL if m.startswith("fluxagent.")} - {"__main__"}
    actual = {f"{r}/" if (PACKAGE / r).is_dir() else f"{r}.py" for r in rooms}
    assert shown == actual, "the layout table of docs/ARCHITECTURE.md: one line per room of fluxagent/"
