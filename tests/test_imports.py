"""The package's import graph: no circle anywhere, and the house rules on which room may import which.

Every `import` and `from ... import` of an `hf_immunize` module counts, at module level or inside a function (an
import deferred into a function still ties the two modules together). A name imported from a package resolves to its
submodule when one has that name, else to the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "hf_immunize"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: `from .x import y` inside `package`
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                resolved = resolve(target) if target.startswith("hf_immunize") else None
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    found = cycles(graph)
    detail = [" -> ".join(c) + f"  (edges: {[(m, sorted(graph[m] & set(c))) for m in c]})" for c in found]
    assert not found, "import circles:\n" + "\n".join(detail)


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("hf_immunize.core", ("hf_immunize.methods", "hf_immunize.bench", "hf_immunize.commands")),
        ("hf_immunize.evaluation", ("hf_immunize.methods", "hf_immunize.bench", "hf_immunize.commands")),
        ("hf_immunize.data", ("hf_immunize.methods", "hf_immunize.bench", "hf_immunize.evaluation")),
        ("hf_immunize.methods", ("hf_immunize.bench", "hf_immunize.commands")),
    ],
)
def test_rooms_import_only_downwards(room, forbidden):
    """core/ never imports a method, evaluation/ never a trainer, and no library room imports the benchmarks."""
    bad = [
        (module, target)
        for module, targets in import_graph().items()
        if module == room or module.startswith(room + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert not bad, bad


def test_methods_never_import_each_other():
    bad = []
    for module, targets in import_graph().items():
        if not module.startswith("hf_immunize.methods."):
            continue
        own = ".".join(module.split(".")[:3])
        bad += [(module, t) for t in targets if t.startswith("hf_immunize.methods.") and not t.startswith(own)]
    assert not bad, bad


def test_no_module_grows_past_the_size_of_one_job():
    """A module over ~450 lines is a sign that two jobs share one room (docs/architecture.md): split it at its seam."""
    long = {
        str(p.relative_to(REPO_ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 460
    }
    assert not long, long
