"""The package's layers only point down, and no modules import each other in a circle, lazily or not.

Every `import` statement of every module counts, at the top or inside a function body. A layer is a folder of
the package; a new module goes into the folder of its layer, and a new top-level module (an entry point) must be
named here: the test fails on a module it does not know.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "projector_bench"

# From the bottom up, by folder (a module at the top level is an entry point); a module may import its own
# layer or one below it.
LAYERS = [
    ("leaves", ["core"]),
    ("models", ["", "models", "tasks"]),  # "": the package's __init__
    ("measurement", ["costs", "accuracy"]),
    ("job", ["jobs"]),
    ("analysis", ["analysis"]),
    ("entry points", ["search", "bench", "regress", "cli", "__main__"]),
]
LAYER = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    if top not in LAYER:
        raise AssertionError(f"module projector_bench.{module} has no layer: add it to LAYERS in {__file__}")
    return LAYER[top]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that `module` imports anywhere in its source (relative or absolute imports)."""
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if module else []
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "projector_bench"]
            out |= {n.removeprefix("projector_bench").lstrip(".") for n in names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "projector_bench":
                base = []
                node_module = node.module.removeprefix("projector_bench").lstrip(".")
                target = node_module.split(".") if node_module else []
                out |= _targets(base + target, node, known)
                continue
            else:
                continue
            out |= _targets(base + (node.module.split(".") if node.module else []), node, known)
    return {m for m in out if m != module}


def _targets(parts: list[str], node: ast.ImportFrom, known: set[str]) -> set[str]:
    mod = ".".join(parts)
    subs = {f"{mod}.{a.name}" if mod else a.name for a in node.names}
    return {s for s in subs if s in known} | ({mod} if not subs <= known else set())


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for m in _modules():
        _layer(m)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"projector_bench.{m} ({LAYERS[_layer(m)][0]}) imports projector_bench.{t} ({LAYERS[_layer(t)][0]})"
              for m, targets in _graph().items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source, bad", [
    ("from ..jobs.runner import run\n", "jobs.runner"),   # measurement -> job: upward
    ("def f():\n    from ..cli import main\n", "cli"),  # lazily, inside a function: still counted
])
def test_the_check_sees_upward_imports_even_lazy_ones(tmp_path, source, bad):
    path = tmp_path / "roofline.py"
    path.write_text(source)
    found = _imports("costs.roofline", path, set(_modules()))
    assert found == {bad} and _layer(bad) > _layer("costs.roofline")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_exit_codes_and_error_lines_are_decided_in_one_place():
    """Entry points raise the house's exceptions; `core/errors.py` alone prints `error:` and picks the exit
    code. Left elsewhere: `raise SystemExit(main())`, and the CLI's re-raise of a signal as 130."""
    found = []
    for module, path in _modules().items():
        if module == "core.errors":
            continue
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "SystemExit"):
            arg = ast.unparse(call.args[0]) if call.args else ""
            if arg not in ("main()", "130"):
                found.append(f"{module}:{call.lineno} SystemExit({arg})")
        for call in _calls(tree, "print"):
            text = ast.unparse(call.args[0]) if call.args else ""
            if text.lstrip("f").strip("'\"").startswith("error:"):
                found.append(f"{module}:{call.lineno} print({text[:40]}...)")
    assert not found, "\n".join(found)


PRIVATE = ("hydra._internal", "optuna.storages._", "._trial_id", "._storage", "pool._pool", "portable_lib._",
           "torchao.utils import _")


def test_private_apis_of_hydra_optuna_multiprocessing_and_executorch_live_in_compat():
    """`core/compat.py` alone reaches into those libraries' private names (each pinned by tests/test_compat.py)."""
    found = [f"{m}: {p}" for m, path in _modules().items() if m != "core.compat"
             for p in PRIVATE if p in path.read_text()]
    assert not found, "\n".join(found)
