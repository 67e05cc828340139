"""The package's import graph has no cycle, counting imports inside functions too.

The graph is read from the source (``ast``), so a lazy ``import`` inside a function that closes a loop is
caught as well as a module-level one. The fused kernel is a real subpackage (``alr_fast/loss/triton``).
The packages form layers (``LAYERS``): a module may import its own layer and the layers below it, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for everything under alr_fast/."""
    found = {}
    base = ROOT / "alr_fast"
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        found[".".join(["alr_fast", *parts])] = path
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # "from pkg import mod" imports the submodule when there is one.
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for target in names:
                # the deepest known module that the name refers to
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    """The checker itself: it must see a function-level import (so it would catch a lazy cycle)."""
    graph = _import_graph()
    assert "alr_fast.loss.triton.launch" in graph
    assert "alr_fast.loss.contract" in graph["alr_fast.loss.triton.launch"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    # An edge from a submodule to its own ancestor package ("from alr_fast.data import x" inside
    # alr_fast/data/loaders/...) names a namespace it already lives in and is dropped; every other edge counts,
    # the package __init__ files' imports of their submodules included. On the tree before the restructuring
    # this finds the two cycles it had: functional -> kernels -> kernels.alr_loss -> functional, and
    # trainer <-> data.train_data.
    graph = {v: {w for w in ws if not v.startswith(w + ".")} for v, ws in _import_graph().items()}
    assert _cycles(graph) == []


# Lowest first. A module may import modules of its own layer or of a lower one. The top layer holds the
# entry points (cli, demo, launch, recipes) and the package's own __init__ (its public names).
LAYERS = [
    ("util", ["alr_fast.util"]),
    ("loss", ["alr_fast.loss"]),
    ("data", ["alr_fast.data"]),
    ("config", ["alr_fast.config"]),
    ("train", ["alr_fast.train"]),
    ("labels", ["alr_fast.labels"]),
    ("entry", ["alr_fast.recipes", "alr_fast.cli", "alr_fast.demo", "alr_fast.launch", "alr_fast.torchrun",
               "alr_fast.deepspeed", "alr_fast.__main__"]),
]


def _layer(module: str) -> int:
    if module == "alr_fast":
        return len(LAYERS)  # the package __init__: re-exports public names from any layer
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer of LAYERS (add it to one)")


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_layers_import_only_downwards():
    graph = {v: {w for w in ws if not v.startswith(w + ".")} for v, ws in _import_graph().items()}
    upward = sorted(f"{v} -> {w}" for v, ws in graph.items() for w in ws if _layer(w) > _layer(v))
    assert upward == [], "imports that go up a layer:\n" + "\n".join(upward)


def test_layer_check_sees_an_upward_import():
    """The checker itself: a loss module importing the trainer is flagged."""
    assert _layer("alr_fast.train.trainer") > _layer("alr_fast.loss.functional")
    assert _layer("alr_fast.loss.triton.launch") == _layer("alr_fast.loss.bank")
