"""The package's layering, read from the source (no import needed).

``quantlens.analysis`` is split by job and its dependencies run one way (lazy imports
included)::

    analysis.sweep  <-  analysis.network.build  <-  fixes  <-  analysis.network  <-  analysis.experiments

``sweep``: the layer-by-layer engine and ``analyze``; ``network``: a whole network quantized
under a config (``build``: compile it; ``measure``: apply the config's fixes, then score it;
``trials``: fixed graphs' single-layer cells); ``fixes``: graph transforms, which may build a
quantized network (bias correction); ``experiments``: additivity, the fix loop, plan, role
sweeps. No module imports another at load time in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ["quantlens.sweep", "quantlens.engine.build", "quantlens.fixes", "quantlens.network",
          "quantlens.experiments"]


def _layer(module: str) -> "int | None":
    """The index of the longest prefix of ``module`` in LAYERS (None: outside them)."""
    best = None
    for i, layer in enumerate(LAYERS):
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(LAYERS[best])):
            best = i
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "quantlens").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """Modules of quantlens that ``name`` imports (at load time only, if ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def test_no_import_cycle_at_load_time():
    modules = _modules()
    graph = {n: _imports(n, p, modules, True) for n, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages load; drop parent->child edges
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)


def test_analysis_layers_depend_one_way():
    modules = _modules()
    bad = []
    for n, p in modules.items():
        own = _layer(n)
        if own is None:
            continue
        for m in _imports(n, p, modules, False):  # lazy imports count too
            other = _layer(m)
            if other is not None and other > own:
                bad.append(f"{n} imports {m}")
    assert not bad, bad


def test_every_analysis_module_is_in_a_layer():
    stray = [n for n in _modules() if n.startswith("quantlens.analysis.") and _layer(n) is None]
    assert not stray, stray
