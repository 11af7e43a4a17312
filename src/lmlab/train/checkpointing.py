"""Training checkpoints: ``<out_dir>/checkpoints/step-{N:08d}/`` written atomically, no pickles.

Layout of one checkpoint directory::

    config.json, model.safetensors   the model in HF layout (loadable on its own by lmlab.io.checkpoint)
    optimizer.safetensors            optimizer state tensors, keyed "<param name>::<state name>"
    optimizer.json                   optimizer scalars + param groups (parameters referenced by name)
    trainer_state.json               step, tokens seen, best val loss, per-rank RNG and data-position states,
                                     and the byte size of every other file (detects truncation)

Writes go to ``step-N.tmp`` and are renamed with ``os.replace`` only when complete, so a crash leaves either
the old set of checkpoints or the new one, never a half-written ``step-N``. Reading validates every file
before anything is applied; a damaged file raises LmlabError naming it.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lmlab.errors import LmlabError

CKPT_RE = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"
FORMAT_VERSION = 1
_STANDIN_MARK = "lmlab_train_standin"


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first (``*.tmp`` directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------------------------- model
def _is_lmlab_transformer(model: nn.Module) -> bool:
    try:
        from lmlab.core.config import ModelConfig
    except ImportError:  # pragma: no cover
        return False
    return isinstance(getattr(model, "config", None), ModelConfig)


def _is_sharded(model: nn.Module) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def _dedupe_tied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: dict[tuple, str] = {}
    out = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else (name,)
        if key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


def write_model(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """The ONE place that writes model weights. lmlab Transformers go through ``lmlab.io.checkpoint.save_model``
    (HF layout); any other module (tests, wrappers) gets ``model.safetensors`` + a marker ``config.json``."""
    if _is_lmlab_transformer(model):
        try:
            from lmlab.io.checkpoint import save_model
        except ImportError:
            save_model = None
        if save_model is not None:
            if _is_sharded(model):  # FSDP: save a plain copy holding the gathered full state
                plain = type(model)(model.config)
                plain.load_state_dict(state)
                model = plain
            save_model(model, directory)
            _write_extra_state(model, state, directory)
            return
    save_file(_dedupe_tied(state), str(directory / "model.safetensors"))
    config = getattr(model, "config", None)
    meta = {_STANDIN_MARK: True, "class": type(model).__name__}
    if hasattr(config, "to_dict"):
        meta["config"] = config.to_dict()
    (directory / "config.json").write_text(json.dumps(meta, indent=1, default=str))


EXTRA_STATE_FILE = "extra_state.safetensors"


def _write_extra_state(model: nn.Module, state: dict[str, torch.Tensor], directory: Path) -> None:
    """Tensors the HF layout has no name for (LoRA and other adapters attached to the model) go beside it,
    so a fine-tuning run with an adapter resumes with the adapter it trained."""
    from lmlab.core.model import Transformer

    with torch.device("meta"):
        plain = set(Transformer(model.config).state_dict())
    extra = {k: v for k, v in state.items() if k not in plain}
    if extra:
        save_file(_dedupe_tied(extra), str(directory / EXTRA_STATE_FILE))


def read_model_state(directory: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict stored in ``directory``, with tied names filled in from ``model``."""
    config_path = directory / "config.json"
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LmlabError(f"{config_path}: unreadable checkpoint file ({err})") from err
    if meta.get(_STANDIN_MARK):
        path = directory / "model.safetensors"
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise LmlabError(f"{path}: corrupt or truncated checkpoint file ({err})") from err
    else:
        try:
            from lmlab.io.checkpoint import load_model
        except ImportError as err:
            raise LmlabError(f"{directory}: HF-layout checkpoint but lmlab.io.checkpoint is unavailable") from err
        try:
            state = dict(load_model(directory).state_dict())
            if (directory / EXTRA_STATE_FILE).is_file():
                state.update(load_file(str(directory / EXTRA_STATE_FILE)))
        except LmlabError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure to parse the files is a damaged checkpoint
            raise LmlabError(f"{directory}: corrupt or truncated model files ({err})") from err
    # fill in names that alias another parameter in this model (tied embeddings)
    own = model.state_dict(keep_vars=True)
    ptr_to_names: dict[int, list[str]] = {}
    for name, tensor in own.items():
        ptr_to_names.setdefault(id(tensor), []).append(name)
    for names in ptr_to_names.values():
        present = [n for n in names if n in state]
        if present:
            for name in names:
                state.setdefault(name, state[present[0]])
    return state


# ------------------------------------------------------------------------------------------- optimizer
# On disk, optimizer state is keyed by parameter *name* (as torch.distributed.checkpoint does), not by the
# position of the parameter in the optimizer, so it survives a change of strategy (ddp <-> fsdp).
def named_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict:
    """``optimizer.state_dict()`` with parameter indices replaced by names from ``module.named_parameters()``."""
    names = {id(p): n for n, p in module.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {order[i]: entry for i, entry in sd["state"].items()}, "param_groups": groups}


def indexed_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module, named: dict, source: Path) -> dict:
    """Inverse of ``named_optimizer_state`` for this optimizer; refuses groups that do not match the model."""
    names = {id(p): n for n, p in module.named_parameters()}
    current = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    saved = [list(g["params"]) for g in named["param_groups"]]
    if saved != current:
        raise LmlabError(f"{source}: optimizer parameter groups do not match the model (saved "
                         f"{sum(map(len, saved))} params in {len(saved)} groups, the model has "
                         f"{sum(map(len, current))} in {len(current)})")
    index = {n: i for i, n in enumerate(n for g in current for n in g)}
    unknown = [n for n in named["state"] if n not in index]
    if unknown:
        raise LmlabError(f"{source}: optimizer state for unknown parameter '{unknown[0]}'")
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": {index[n]: entry for n, entry in named["state"].items()}, "param_groups": groups}


def split_optimizer_state(named: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors for safetensors keyed "<param>::<key>", JSON-able rest) of a name-keyed optimizer state."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pname, entry in named["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pname}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(pname, {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in named["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        pname, _, sname = key.rpartition("::")
        state.setdefault(pname, {})[sname] = value
    for pname, entry in rest.get("scalars", {}).items():
        state.setdefault(pname, {}).update(entry)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest.get("param_groups", [])]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) generator states as JSON-able values."""
    py = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def _jsonable(value: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as err:
        raise LmlabError(f"{where} is not JSON-serialisable ({err}); state_dict() must return plain values") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------- write / read
def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def write_checkpoint(root: Path, step: int, model: nn.Module, model_state: dict[str, torch.Tensor],
                     opt_tensors: dict[str, torch.Tensor], opt_rest: dict, trainer_state: dict,
                     keep_last: int) -> Path:
    """Write ``root/step-N`` atomically (call on the main rank only) and prune to the newest ``keep_last``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / (step_dir_name(step) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_model(model, model_state, tmp)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(_jsonable(opt_rest, "optimizer state"), indent=1))
    state = dict(trainer_state)
    state["format"] = FORMAT_VERSION
    state["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / STATE_FILE).write_text(json.dumps(_jsonable(state, "trainer state"), indent=1))
    _fsync_tree(tmp)
    if final.exists():  # a stale checkpoint at the same step from an earlier, abandoned run
        shutil.rmtree(final)
    os.replace(tmp, final)
    try:
        dir_fd = os.open(root, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:  # pragma: no cover - not all platforms can fsync a directory
        pass
    if keep_last > 0:
        for _, old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(directory: Path, model: nn.Module) -> dict[str, Any]:
    """Load and validate every file of one checkpoint; returns
    {"trainer_state", "model_state", "opt_tensors", "opt_rest"}. Applies nothing."""
    state_path = directory / STATE_FILE
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise LmlabError(f"{state_path}: missing; the checkpoint is incomplete") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LmlabError(f"{state_path}: corrupt or truncated checkpoint file ({err})") from err
    if not isinstance(state, dict) or "step" not in state:
        raise LmlabError(f"{state_path}: not a trainer state (no 'step')")
    for name, size in state.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise LmlabError(f"{path}: missing from the checkpoint")
        if path.stat().st_size != size:
            raise LmlabError(f"{path}: truncated or modified ({path.stat().st_size} bytes, expected {size})")
    opt_path = directory / "optimizer.safetensors"
    try:
        opt_tensors = load_file(str(opt_path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise LmlabError(f"{opt_path}: corrupt or truncated checkpoint file ({err})") from err
    rest_path = directory / "optimizer.json"
    try:
        opt_rest = json.loads(rest_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LmlabError(f"{rest_path}: corrupt or truncated checkpoint file ({err})") from err
    model_state = read_model_state(directory, model)
    return {"trainer_state": state, "model_state": model_state, "opt_tensors": opt_tensors, "opt_rest": opt_rest}
