"""The package's layering, read from the source (nothing is imported).

Every module lives in a folder named for its job, and the folders depend one way, lowest
first (a folder may import only folders below it; lazy imports inside functions count)::

    quant -> stats -> core -> data -> metrics -> graph -> engine -> parallel -> sweep
          -> fixes -> network -> experiments -> export -> runtime -> report -> demo -> cli

``quant``: formats, specs, observers, range estimators, quantizers; ``stats``: the sign rule
and intervals; ``core``: the domain types (per-layer and sweep configs, Workload, Inputs,
roles, result files) and the rules every run follows (the model guard, numerics);
``data``: the user's batches, objects and model files; ``metrics``: task and token metrics;
``graph``: capture only; ``engine``: the one engine everything uses (runners, cones, multi-bit
batching, accumulation, the quantized network); ``parallel``: executors and the store;
``sweep``: analyze and its modes; ``fixes``; ``network``: whole-network measurement;
``experiments``: additivity, the fix loop, plan, role sweeps; ``export``, ``runtime``,
``report``, ``demo``, ``cli``. At the top level only ``__init__``, ``__main__``, ``_version``
and ``errors``, which any folder may import. No module imports another folder's private
name, and no test module imports another test module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ORDER = ["quant", "stats", "core", "data", "metrics", "graph", "engine", "parallel", "sweep", "fixes", "network",
         "experiments", "export", "runtime", "report", "demo", "cli"]
TOP_LEVEL = {"quantlens", "quantlens.__main__", "quantlens._version", "quantlens.errors"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "quantlens").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every import of a quantlens module by ``name``,
    wherever it stands (module level, functions, ``TYPE_CHECKING`` blocks)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full, None) if full in modules else (base, alias.name))
        elif isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
    return [(m, n) for m, n in out if m in modules and m != name]


def _folder(module: str) -> str:
    """``quantlens.engine.cone`` -> ``engine``; a top-level module is its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "quantlens"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {n: {m for m, _ in _imports(n, p, modules)} for n, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages load; drop parent->child edges
    return {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_no_module_import_cycle_lazy_imports_included():
    cycle = _cycle(_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_folder_import_cycle():
    folders: dict[str, set[str]] = {}
    for n, deps in _graph().items():
        for m in deps:
            if _folder(n) != _folder(m) and n not in ("quantlens", "quantlens.__main__"):
                folders.setdefault(_folder(n), set()).add(_folder(m))
    cycle = _cycle(folders)
    assert not cycle, "folder cycle: " + " -> ".join(cycle)


def test_folders_depend_one_way():
    bad = []
    for n, deps in _graph().items():
        a = _folder(n)
        for m in deps:
            b = _folder(m)
            if a == b or m in TOP_LEVEL or n in ("quantlens", "quantlens.__main__"):
                continue
            if a not in ORDER or b not in ORDER or ORDER.index(b) > ORDER.index(a):
                bad.append(f"{n} imports {m}")
    assert not bad, bad


def test_the_library_never_imports_the_cli():
    bad = [f"{n} imports {m}" for n, deps in _graph().items() for m in deps
           if _folder(m) == "cli" and _folder(n) != "cli" and n != "quantlens.__main__"]
    assert not bad, bad


def test_only_four_modules_at_the_top_level():
    loose = {n for n, p in _modules().items() if n.count(".") == 1 and p.name != "__init__.py"}
    assert loose <= TOP_LEVEL, sorted(loose - TOP_LEVEL)
    folders = {_folder(n) for n in _modules()} - {"quantlens"} - {n.split(".")[1] for n in loose}
    assert folders == set(ORDER), sorted(folders ^ set(ORDER))


def test_no_import_of_another_folders_private_name():
    modules = _modules()
    bad = []
    for n, p in modules.items():
        for m, name in _imports(n, p, modules):
            if _folder(n) == _folder(m) or m in TOP_LEVEL:
                continue
            private_module = any(part.startswith("_") and not part.startswith("__") for part in m.split("."))
            if private_module or (name and name.startswith("_") and not name.startswith("__")):
                bad.append(f"{n} imports {m}{'.' + name if name else ''}")
    assert not bad, bad


def test_no_test_module_imports_another():
    tests = ROOT / "tests"
    names = {p.stem for p in tests.rglob("test_*.py")} | {p.stem for p in tests.rglob("conftest.py")}
    bad = []
    for p in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            bad += [f"{p.relative_to(ROOT)} imports {m}" for m in mods if m.rpartition(".")[2] in names]
    assert not bad, bad
