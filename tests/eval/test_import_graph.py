"""lmlab.eval has no import cycles, counting imports inside functions too (a lazy import that closes a cycle
is still a cycle: the two modules cannot be understood, or moved, one without the other)."""

import ast
from pathlib import Path

import lmlab

EVAL = Path(lmlab.__file__).parent / "eval"


def module_name(path: Path) -> str:
    parts = path.relative_to(EVAL.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in EVAL.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for target in targets:
                while target and target not in modules:  # `from pkg.mod import name` -> pkg.mod
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_sees_the_task_modules():
    graph = import_graph()
    assert "lmlab.eval.task_spec" in graph["lmlab.eval.formats"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles_in_eval():
    assert find_cycle(import_graph()) is None
