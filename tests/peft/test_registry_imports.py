"""The adapter registry lives in its own module: every method module imports cleanly on its own, first, in a
fresh interpreter (no cycle through ``lmlab.peft.__init__``), and other modules use only public names."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEFT = ROOT / "src" / "lmlab" / "peft"


@pytest.mark.parametrize("module", ["registry", "inject", "lora", "adapters", "balora", "flora", "peft_io"])
def test_each_peft_module_imports_first_in_a_fresh_interpreter(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    code = (f"import lmlab.peft.{module}, sys; from lmlab.peft.registry import available_methods; "
            "assert {'lora', 'balora', 'series_adapter', 'parallel_adapter'} <= set(available_methods())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
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
