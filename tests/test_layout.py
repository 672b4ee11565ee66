"""The package's layers: imports between aha's modules go one way. An import inside a function counts as
much as one at the top (it only moves the cycle to run time), and so does one under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import aha

ROOT = Path(aha.__file__).parent


def module_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """aha module -> the aha modules it imports anywhere in its source (a package's own submodules importing
    the package itself, which Python always initialises first, are not counted)."""
    files = {}
    for f in root.rglob("*.py"):
        parts = ("aha", *f.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = f
    graph: dict[str, set[str]] = defaultdict(set)
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(module_graph()) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "aha"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from aha.sub import a\n")  # a package and its own module: fine
    (pkg / "sub" / "a.py").write_text("from aha import sub\nfrom aha.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.a import y\n")  # in a function: still a cycle
    assert cycles(module_graph(pkg)) == [["aha.b", "aha.sub.a"]]


def test_layers_point_down():
    """Lower layers never import higher ones: the rollout, rewards and data layers know nothing of training,
    stages or the command line; training knows nothing of stages or the command line."""
    order = ["aha.data", "aha.rollout", "aha.rewards", "aha.training", "aha.stages", "aha.cli"]
    graph = module_graph()
    for name, deps in graph.items():
        layer = next((i for i, p in enumerate(order) if name == p or name.startswith(p + ".")), None)
        if layer is None:
            continue
        for dep in deps:
            dep_layer = next((i for i, p in enumerate(order) if dep == p or dep.startswith(p + ".")), None)
            assert dep_layer is None or dep_layer <= layer, f"{name} imports {dep}"
