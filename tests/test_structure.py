"""The shape of the code: no import cycle, small modules, and imports deferred into
functions only where a heavy engine must stay unloaded, each saying so."""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sal_ray", "dashboards")
MAX_LINES = 400
# What an import inside a function may load: an engine or a heavy library that the
# importing module's other users must not pay for, or a module of ours that loads one.
DEFERRABLE = {"ray", "optuna", "mlflow", "pandas", "matplotlib", "torchvision", "sklearn",
              "torch", "dashboards", "sal_ray"}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def resolve(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (`from ..x import y` in a.b.c -> a.x)."""
    if node.level == 0:
        return node.module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return ".".join(x for x in (package, node.module) if x)


def imports(module: str, path: pathlib.Path, known: set[str]):
    """(imported module, node, inside a function) for every import of ours, top-level
    and inside functions alike."""
    tree = ast.parse(path.read_text())
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node, id(node) in in_function
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"  # `from pkg import submodule`
                yield (sub if sub in known else base), node, id(node) in in_function


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _, _ in imports(m, path, set(mods)):
            if target in mods and target != m:
                edges[m].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_sal_ray_or_dashboards():
    edges = graph()
    assert len(edges) > 40 and "sal_ray.sweep.driver" in edges["sal_ray.sweep.scripts"]
    assert cycles(edges) == []


def test_no_module_is_long():
    long = {m: n for m, p in modules().items() if m.startswith("sal_ray")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_imports_inside_functions_defer_an_engine_and_say_why():
    mods = modules()
    bad = []
    for m, path in mods.items():
        lines = path.read_text().splitlines()
        for target, node, deferred in imports(m, path, set(mods)):
            if not deferred:
                continue
            root = target.split(".")[0]
            text = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
            if root not in DEFERRABLE or "#" not in text:
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} {target}")
    assert bad == []


@pytest.mark.parametrize("text, found", [("import a.b", ["a.b"]), ("from . import x", ["a.p.x"]),
                                         ("from . import y", ["a.p"]),
                                         ("from ..q import r", ["a.q"])])
def test_imports_are_resolved_to_modules(text, found, tmp_path):
    path = tmp_path / "m.py"
    path.write_text(text)
    assert [t for t, _, _ in imports("a.p.m", path, {"a.p.x"})] == found
