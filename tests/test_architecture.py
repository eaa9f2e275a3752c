"""The package's shape: data flows one way (the core never imports the dashboard or a UI library) and no two
modules import each other, directly or around a loop."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xcam_viz"
CORE = ("data", "models", "explain", "evidence", "metrics", "feedback", "finetune", "concepts", "report")
UI = ("panel", "holoviews", "bokeh", "ipywidgets", "jupyter_bokeh", "pyviz_comms")
DRAWS_WITH_BOKEH = {"xcam_viz.report.html"}    # writes the report's offline HTML page; a file format, not the UI


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool, root: Path = PACKAGE) -> set[str]:
    """Modules `path` imports (absolute names), at module level only or anywhere (also inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}     # `from . import x` imports module x
    return found


def package_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (what runs at import time)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: {m for m in imports(path, True, root) if m in modules and m != name}
            for name, path in modules.items()}


def test_the_core_never_imports_the_dashboard_or_a_ui_library():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.split(".")[1:2] and name.split(".")[1] in CORE and name not in DRAWS_WITH_BOKEH:
            bad = {m for m in imports(path, False) if m.split(".")[0] in UI or m.startswith("xcam_viz.dashboard")}
            offenders += [f"{name} imports {m}" for m in sorted(bad)]
    assert not offenders, offenders


def test_the_core_never_imports_the_demo_or_the_cli():
    """The demo and the CLI sit on top of the core; the example data sets live in data/examples.py."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.split(".")[1:2] and name.split(".")[1] in CORE:
            bad = {m for m in imports(path, False) if m.split(".")[:2] in (["xcam_viz", "demo"], ["xcam_viz", "cli"])}
            offenders += [f"{name} imports {m}" for m in sorted(bad)]
    assert not offenders, offenders


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import loops between modules (a package's __init__ importing its own submodules is not one)."""
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return [c for c in found if not any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:]))]


def test_no_import_cycles():
    cycles = cycles_of(package_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    """The check itself can fail: two modules that import each other are found."""
    pkg = tmp_path / "xcam_viz"
    (pkg / "explain").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "explain" / "__init__.py").write_text("from .a import f\n")
    (pkg / "explain" / "a.py").write_text("from .b import g\n")
    (pkg / "explain" / "b.py").write_text("from . import a\n")
    assert cycles_of(package_graph(pkg)) == [["xcam_viz.explain.a", "xcam_viz.explain.b", "xcam_viz.explain.a"]]
