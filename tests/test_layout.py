"""The package's layout rules, checked by reading every module's imports (``ast``, no import executed):

- layers point one way: cli -> studies -> tasks -> init -> training -> render / segment -> model / io / metrics
  (a module imports only modules of its own layer or lower ones);
- no import cycles between modules (lazy imports inside functions included);
- no ``_private`` name (or ``_private`` module) imported from another module;
- an algorithm module (every layer below ``studies``) draws no figure and drives no table: it imports no
  matplotlib, no study module, and defines no public ``*_table`` / ``fig*`` / ``*_figure`` / ``*claim*`` function;
- initializer facts live in the registry: nothing inspects an initializer's signature.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "smoe_core"

#: layer of every module, by the longest matching prefix
LAYERS = {
    "smoe_core.model": 0, "smoe_core.io": 0, "smoe_core.metrics": 0, "smoe_core.parallel": 0,
    "smoe_core.version": 0, "smoe_core.papers": 0, "smoe_core.limits": 0, "smoe_core.lazy": 0,
    "smoe_core.render": 1, "smoe_core.segment": 1,
    "smoe_core.training": 2,
    "smoe_core.init": 3,
    "smoe_core.tasks": 4,
    "smoe_core.studies": 5,
    "smoe_core.cli": 6,
}
LAYER_NAMES = ["model/io/metrics", "render/segment", "training", "init", "tasks", "studies", "cli"]
#: edge_paper reads the keyword defaults of the edge initializer for its Fig. 2 parameter table (not a fact
#: about what the initializer is, which the registry holds)
SIGNATURE_READERS = {"smoe_core.studies.edge_paper"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def layer(name: str) -> int | None:
    best = None
    for prefix, lay in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, lay)
    return None if best is None else best[1]


def imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement of a module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if is_package(name) else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [a.name for a in node.names]
            # "from pkg import submodule" imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs:
                for s in subs:
                    out.append((s, [], node.lineno))
                rest = [n for n in names if f"{target}.{n}" not in MODULES]
                if rest:
                    out.append((target, rest, node.lineno))
            else:
                out.append((target, names, node.lineno))
    return out


def internal_edges():
    for name in MODULES:
        for target, names, line in imports(name):
            if target == "smoe_core" or target.startswith("smoe_core."):
                yield name, target, names, line


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m not in ("smoe_core", "smoe_core.notebooks") and layer(m) is None]
    assert not missing, f"modules outside the layers: {missing}"


def test_layers_point_one_way():
    bad = []
    for src, dst, _, line in internal_edges():
        if src == "smoe_core":  # the package's public API re-exports from every layer
            continue
        if dst == "smoe_core":
            bad.append(f"{src}:{line} imports the package's public API (import the module that defines it)")
            continue
        ls, ld = layer(src), layer(dst)
        if ls is not None and ld is not None and ld > ls:
            bad.append(f"{src}:{line} ({LAYER_NAMES[ls]}) imports {dst} ({LAYER_NAMES[ld]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _, _ in internal_edges():
        if dst in graph and dst != src:
            graph[src].add(dst)
    # a package imports its submodules and they import siblings through it: that is the package, not a cycle
    # between modules, unless a submodule imports its own package's __init__
    for m in graph:
        graph[m] = {d for d in graph[m] if not (is_package(d) and m.startswith(d + "."))
                    or pytest.fail(f"{m} imports its own package {d}")}
    color, stack, cycles = {}, [], []

    def visit(m):
        color[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if color.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in color:
                visit(d)
        stack.pop()
        color[m] = 2

    for m in sorted(graph):
        if m not in color:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = []
    for src, dst, names, line in internal_edges():
        if any(part.startswith("_") and not part.startswith("__") for part in dst.split(".")):
            bad.append(f"{src}:{line} imports the private module {dst}")
        for n in names:
            if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
                bad.append(f"{src}:{line} imports the private name {n} from {dst}")
    assert not bad, "\n".join(bad)
    private_modules = [m for m in MODULES if any(p.startswith("_") and not p.startswith("__") for p in m.split("."))]
    assert not private_modules, f"private modules: {private_modules}"


def test_algorithm_modules_hold_no_figures_or_table_drivers():
    bad = []
    for name, path in MODULES.items():
        lay = layer(name)
        if lay is None or lay >= LAYERS["smoe_core.studies"]:
            continue
        for target, _, line in imports(name):
            if target.split(".")[0] in ("matplotlib", "IPython", "papermill") or target.startswith("smoe_core.studies"):
                bad.append(f"{name}:{line} imports {target}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_") and re.search(
                    r"(_table$|^fig\d|_figure$|claim|^plot_)", node.name):
                bad.append(f"{name}:{node.lineno} defines {node.name} (a table driver or figure: put it in studies)")
    assert not bad, "\n".join(bad)


def test_initializer_facts_are_not_read_from_signatures():
    bad = [m for m, p in MODULES.items() if "inspect.signature" in p.read_text() and m not in SIGNATURE_READERS]
    assert not bad, f"these modules inspect signatures; ask smoe_core.init.registry instead: {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader resolves relative imports (a check that reads nothing would pass every rule)."""
    edges = {(s, d) for s, d, _, _ in internal_edges()}
    assert ("smoe_core.training", "smoe_core.render") in edges
    assert ("smoe_core.render.autograd", "smoe_core.render.cpu") in edges
    assert ("smoe_core.studies.edge_paper", "smoe_core.tasks.tilewise") in edges
    assert layer("smoe_core.render.cpu") == 1 and layer("smoe_core.studies.results") == 5
