"""Quantized checkpoints: config.json (the model's HF config plus ``quantization_config``) + model.safetensors.

The tensors are stored under lmlab's own state-dict names (``blocks.0.attn.q_proj.qweight``, ``.scales``,
``.qzeros``; ``embed.weight``, ...), not HF's: HF families fuse or transpose some projections (GPT-2's
``c_attn``, NeoX's ``query_key_value``) and a quantized matrix cannot be re-fused without re-quantizing.
``quant_method: "lmlab"`` tells ``transformers`` (and anyone else) that this is not one of their formats.

Loading checks every tensor against what the config implies (names, shapes, integer dtypes) and names the
first mismatch in one line; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlab.efficient.quant import QuantizedLinear
from lmlab.efficient.quantization import ACTIVATION_DTYPES, QuantizationConfig, swap_module
from lmlab.errors import LmlabError

WEIGHTS = "model.safetensors"


def is_quantized_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory``'s config.json declares a ``quantization_config`` (any quant_method)."""
    path = Path(directory) / "config.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # the regular loader reports unreadable configs
    return isinstance(d, dict) and d.get("quantization_config") is not None


def save_quantized(model: Any, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a quantized model (from ``lmlab.efficient.quantization``) atomically: temp directory, then rename."""
    from lmlab.io.files import dtype_name as _dtype_name
    from lmlab.io.hf_config import config_to_hf

    qcfg: QuantizationConfig = model.quantization_config
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    hf_cfg = config_to_hf(model.config)
    hf_cfg["dtype"] = _dtype_name(model.dtype)
    hf_cfg["quantization_config"] = qcfg.to_json()
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if not (model.config.tie_embeddings and k == "lm_head.weight")}
    tmp = Path(tempfile.mkdtemp(prefix=".lmlab-save-", dir=d))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "lmlab": "quantized"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for f in tmp.iterdir():
            os.replace(f, d / f.name)
        stale_index = d / "model.safetensors.index.json"
        if stale_index.exists():
            stale_index.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_quantized(path: str | os.PathLike, dtype: Any = None, device: str | torch.device = "cpu") -> Any:
    """A Transformer with ``QuantizedLinear`` layers, from a directory ``save_quantized`` wrote."""
    from lmlab.core.model import Transformer
    from lmlab.io.files import parse_dtype, read_json
    from lmlab.io.hf_config import config_from_hf

    d = Path(path)
    raw = read_json(d / "config.json")
    where = str(d / "config.json")
    qcfg = QuantizationConfig.from_json(raw.pop("quantization_config"), where)
    config = config_from_hf(raw, where=where)
    if not (d / WEIGHTS).exists():
        raise LmlabError(f"{d}: quantized checkpoint lacks {WEIGHTS}")
    try:
        state = load_file(str(d / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise LmlabError(f"{d / WEIGHTS}: truncated or corrupt safetensors file ({err})") from None

    with torch.device("meta"):
        model = Transformer(config)
        act = ACTIVATION_DTYPES[qcfg.activation_dtype]
        for name in qcfg.quantized:
            try:
                old = model.get_submodule(name)
            except AttributeError:
                raise LmlabError(f"{where}: quantization_config lists {name!r}, which is not a module of this "
                                 f"{config.model_type} model") from None
            if not isinstance(old, torch.nn.Linear):
                raise LmlabError(f"{where}: quantization_config lists {name!r}, which is not a linear layer")
            swap_module(model, name, QuantizedLinear(old.in_features, old.out_features, *qcfg.format_of(name),
                                                     old.bias is not None, act))
    expected = {k: v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "lm_head.weight")}
    _check_tensors(state, expected, d / WEIGHTS)
    target = parse_dtype(dtype)
    final = target or state["embed.weight"].dtype
    state = {k: (v.to(final) if v.is_floating_point() and not k.endswith(".scales") else v).to(device).contiguous()
             for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.quantization_config = qcfg
    model.eval()
    return model


def _check_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: Path) -> None:
    """Every expected tensor present with its shape and integer dtype; nothing else."""
    for name, ref in expected.items():
        if name not in state and name.endswith(".weight") and name[:-len("weight")] + "qweight" in state:
            raise LmlabError(f"{where}: layer {name[:-len('.weight')]!r} is stored quantized but "
                             "quantization_config.quantized does not list it")
        if name not in state:
            hint = " (config.json says this layer is quantized)" if name.endswith((".qweight", ".scales", ".qzeros")) else ""
            raise LmlabError(f"{where}: missing tensor {name!r}{hint}")
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise LmlabError(f"{where}: tensor {name!r} has shape {tuple(got.shape)}, quantization_config and "
                             f"config.json imply {tuple(ref.shape)}")
        if not ref.is_floating_point() and got.dtype != ref.dtype:
            raise LmlabError(f"{where}: tensor {name!r} is {got.dtype}, quantization_config implies {ref.dtype}")
        if ref.is_floating_point() and not got.is_floating_point():
            raise LmlabError(f"{where}: tensor {name!r} is {got.dtype}, expected a float tensor")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise LmlabError(f"{where}: unexpected tensor {extra[0]!r} (not part of this quantized model; "
                         f"does quantization_config.quantized list its layer?)")
