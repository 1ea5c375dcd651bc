"""The package's layout: stages import shared rooms, never each other through a cycle; small files.

The import graph is read with ``ast`` from every ``import`` statement in ``gftrepro/``, those written
inside functions included (lazy imports of heavy modules are fine, but one that only dodges a cycle
would close one here). An edge ``a -> b`` is any import of module ``b`` (``from gftrepro import b``,
``from gftrepro.b import x``, ``import gftrepro.b``); a package's ``__init__`` is its own node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gftrepro"
MAX_LINES = 400
STAGES = ("sample", "verify", "build_groups", "train", "evaluate")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, here: str, is_package: bool, known: set[str]) -> list[str]:
    """The gftrepro modules one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]  # from pkg import module
    if target in known and len(out) < len(node.names):
        out.append(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in ast.walk(tree):
            edges.update(imported(node, name, path.name == "__init__.py", known))
        graph[name] = edges - {name, "gftrepro"}  # the top package holds only __version__
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "gftrepro.online" in graph["gftrepro.train"]  # module level
    assert "gftrepro.backends.hf" in graph["gftrepro.backends"]  # inside make_backend
    assert "gftrepro.engine.batches" in graph["gftrepro.testbed.build"]  # inside train_sft


@pytest.mark.parametrize("stage", STAGES)
def test_stages_do_not_import_each_other(stage):
    graph = import_graph()
    others = {f"gftrepro.{s}" for s in STAGES} - {f"gftrepro.{stage}"}
    assert not graph[f"gftrepro.{stage}"] & others


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_command_with_a_run_folder_takes_both_spellings():
    """``--run`` and ``--run-dir`` name the run folder on every command that has one (``gft status`` lacked the
    second)."""
    import typer

    from gftrepro.cli import app

    commands = typer.main.get_command(app).commands
    lacking = {name for name, cmd in commands.items() for p in cmd.params
               if "--run" in getattr(p, "opts", []) and "--run-dir" not in p.opts}
    assert "status" in commands and not lacking, lacking
