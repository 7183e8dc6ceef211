"""Shape of the code base: no function much over 60 lines (issue 10), the layers of
docs/architecture.md with every import pointing down and no cycle, lazy imports included (issue 19).

Every check reads the source with ``ast``; nothing under kdx/ is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdx"
MAX_LINES = 70  # the rule is "no function much over 60 lines"; 70 leaves room for a signature and a docstring

# (file relative to the repository root, function's qualified name) -> why it may stay long for now.
# Empty: every function is within the limit. An entry is a debt with its reason; delete it as soon
# as its function is split (test_allow_list_has_no_stale_entry fails until then).
ALLOWED: dict[tuple[str, str], str] = {}


def function_lengths(source: str) -> dict[str, int]:
    """``{qualified name: lines}`` of every function and method in ``source``, nested ones
    included (``Outer.method``, ``func.inner``); lines = ``end_lineno - lineno + 1`` (the
    ``def`` line to the last line of the body, decorators not counted)."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def all_function_lengths() -> dict[tuple[str, str], int]:
    return {(str(f.relative_to(ROOT)), name): n
            for f in sorted(PACKAGE.rglob("*.py")) for name, n in function_lengths(f.read_text()).items()}


def test_function_lengths_are_measured_from_def_to_last_line():
    src = "class A:\n    def f(self):\n        x = 1\n\n        return x\n\n\ndef g():\n    def h():\n        pass\n    return h\n"
    assert function_lengths(src) == {"A.f": 4, "g": 4, "g.h": 2}


def test_no_function_over_the_limit():
    long = {key: n for key, n in all_function_lengths().items() if n > MAX_LINES and key not in ALLOWED}
    assert not long, f"functions over {MAX_LINES} lines (split them into parts with one job each): " + ", ".join(
        f"{file}:{name} ({n})" for (file, name), n in sorted(long.items(), key=lambda kv: -kv[1]))


def test_allow_list_has_no_stale_entry():
    lengths = all_function_lengths()
    stale = [key for key in ALLOWED if lengths.get(key, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from ALLOWED: {stale}"


# ---------------------------------------------------------------------------- import cycles


def module_names(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``package`` (a package as its
    ``__init__.py``)."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _import_time_statements(body: list[ast.stmt]):
    """The statements that run when the module is imported: the module body and the bodies of
    its ``if``/``try``/``with``/``class`` blocks, not function bodies, not ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _import_time_statements(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], (ast.stmt, ast.ExceptHandler)):
                blocks = [h.body for h in inner] if isinstance(inner[0], ast.ExceptHandler) else [inner]
                for block in blocks:
                    yield from _import_time_statements(block)


def _all_import_statements(body: list[ast.stmt]):
    """Every import statement of a module, function bodies included (a lazy import runs when its
    function does, and then it must obey the same layers); ``if TYPE_CHECKING`` blocks excluded."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _all_import_statements(node.orelse)
            continue
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from _all_import_statements([child])
            elif isinstance(child, ast.ExceptHandler):
                yield from _all_import_statements(child.body)


def import_graph(package: Path, lazy: bool = False) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at import time}`` (``lazy``: also the imports
    inside functions).

    ``import a.b`` and ``from a import b`` (``b`` a submodule) point at ``a.b``; ``from a.b
    import name`` (``name`` not a submodule) at ``a.b``. Relative imports are resolved. The
    parent packages that Python initialises on the way are not edges (a package's
    ``__init__`` importing its own submodules is then no cycle).
    """
    modules = module_names(package)

    def owner(dotted: str):
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        here = name if file.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        statements = _all_import_statements if lazy else _import_time_statements
        for node in statements(ast.parse(file.read_text()).body):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {m for t in targets if (m := owner(t)) and m != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or [] when the graph has none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_no_import_cycle_among_kdx_modules():
    """No cycle among kdx's imports, those inside functions included: a lazy import does not
    break a cycle, it hides one."""
    graph = import_graph(PACKAGE, lazy=True)
    assert len(graph) > 50 and graph["kdx.commands.distill_explainer"]  # the scan sees the package
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------------------- the layers

# docs/architecture.md, bottom to top. A module belongs to the first entry that is its name or a
# parent package of it. An import may point to its own layer or a lower one, never up.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("kdx.errors", "kdx.options", "kdx.plugins", "kdx.io", "kdx.seeding", "kdx.version", "kdx.configfile")),
    ("models", ("kdx.models",)),
    ("data", ("kdx.data",)),
    ("engine", ("kdx.engine",)),
    ("distill", ("kdx.distill",)),
    ("analysis", ("kdx.analysis",)),
    ("config", ("kdx.config", "kdx.commandconfig")),
    ("commands", ("kdx.commands",)),
    ("cli", ("kdx.cli", "kdx.__main__")),
    ("api", ("kdx",)),  # the package root: kdx.load and kdx.__version__, for users, imported by no kdx module
]
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}  # (importer, imported) -> why; empty, and it stays so


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if p != "kdx" and (module == p or module.startswith(p + ".")):
                return rank
    if module == "kdx":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer of LAYERS (add it, and to docs/architecture.md)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a in sorted(graph) for b in sorted(graph[a])
            if layer_of(b) > layer_of(a) and (a, b) not in ALLOWED_UPWARD]


def test_every_import_points_down_a_layer_or_stays_in_it():
    graph = import_graph(PACKAGE, lazy=True)
    assert sum(len(v) for v in graph.values()) > 200  # the scan sees the imports, lazy ones too
    bad = upward_imports(graph)
    assert not bad, f"{len(bad)} upward import(s):\n" + "\n".join(bad)
    assert ALLOWED_UPWARD == {}


def test_every_layer_is_written_down_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for name, prefixes in LAYERS:
        for p in prefixes:
            assert f"`{p}`" in doc, f"docs/architecture.md does not name `{p}` (layer {name})"


def test_layer_check_catches_an_upward_lazy_import(tmp_path):
    pkg = tmp_path / "kdx"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("def f():\n    from kdx.engine import trainer\n")
    (pkg / "engine").mkdir()
    (pkg / "engine" / "__init__.py").write_text("")
    (pkg / "engine" / "trainer.py").write_text("from kdx.models import f\n")
    graph = import_graph(pkg, lazy=True)
    assert upward_imports(graph) == ["kdx.models (models) imports kdx.engine.trainer (engine)"]
    assert import_graph(pkg)["kdx.models"] == set()  # import time only: the lazy import is invisible
    assert find_cycle(graph)  # and it closes a cycle


def test_no_private_name_is_imported_across_packages():
    """``from kdx.a.x import _name`` only inside package ``kdx.a`` (tests may not borrow either)."""
    bad = []
    for f in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py")):
        rel = f.relative_to(ROOT)
        here = ".".join(rel.with_suffix("").parts[:2])
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                there = ".".join(node.module.split(".")[:2])
                if there != here and any(a.name.startswith("_") and not a.name.startswith("__") for a in node.names):
                    bad.append(f"{rel}: from {node.module} import {', '.join(a.name for a in node.names)}")
    assert bad == [], "\n".join(bad)


def test_cycle_detector_on_a_toy_package(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from toy import a\n")
    (pkg / "a.py").write_text("from toy.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import os\n\ndef lazy():\n    from toy import a\n")
    graph = import_graph(pkg)
    assert graph == {"toy": {"toy.a"}, "toy.a": {"toy.sub.b"}, "toy.sub": set(), "toy.sub.b": set()}
    assert find_cycle(graph) == []
    (pkg / "sub" / "b.py").write_text("try:\n    from .. import a\nexcept ImportError:\n    a = None\n")
    cycle = find_cycle(import_graph(pkg))
    assert cycle[0] == cycle[-1] and set(cycle) == {"toy.a", "toy.sub.b"}
