"""The adapter registry lives in its own module: every method module imports cleanly on its own, first, in a
fresh interpreter (no cycle through ``lmlab.peft.__init__``), and other modules use only public names."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEFT = ROOT / "src" / "lmlab" / "peft"


MODULES = ["registry", "inject", "lora", "adapters", "balora", "flora", "peft_io"]
FRESH_IMPORTS = """
import importlib, sys
for module in %r:
    for name in [m for m in sys.modules if m == "lmlab.peft" or m.startswith("lmlab.peft.")]:
        del sys.modules[name]  # as in a fresh interpreter: this module is the first of lmlab.peft imported
    importlib.import_module("lmlab.peft." + module)
    from lmlab.peft.registry import available_methods
    assert {"lora", "balora", "series_adapter", "parallel_adapter"} <= set(available_methods()), module
"""


def test_each_peft_module_imports_first():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", FRESH_IMPORTS % (MODULES,)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_private_cross_module_imports_and_no_registry_in_init():
    for path in PEFT.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmlab"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
    init = (PEFT / "__init__.py").read_text()
    assert "noqa: E402" not in init and "_METHODS" not in init


def _module_level_peft_imports(path: Path) -> set[str]:
    """lmlab.peft modules imported at module level (not inside functions) by the file at ``path``."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmlab.peft"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lmlab.peft"))
    return found


def test_peft_module_level_imports_are_acyclic():
    graph = {("lmlab.peft" if p.stem == "__init__" else f"lmlab.peft.{p.stem}"): _module_level_peft_imports(p)
             for p in PEFT.glob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])
