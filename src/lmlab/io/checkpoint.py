"""Load and save Hugging Face checkpoint directories (config.json + safetensors), strictly.

Loading builds the model on the meta device and assigns the converted tensors, so a model costs its own
size in memory. Any unmapped, missing or mis-shaped key is an error naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError
from lmlab.io.gguf_format import gguf_path_or_none
from lmlab.io.hf_config import config_from_hf, config_to_hf, generation_config_json, with_special_tokens
from lmlab.io.files import DTYPES, dtype_name, parse_dtype, read_json  # noqa: F401 (re-exported)
from lmlab.io.keymaps import TIED_HEAD_KEYS, key_map

def read_config(directory: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a checkpoint directory (or a GGUF file), with BOS/EOS/PAD ids that config.json lacks
    taken from its generation_config.json or, failing that, its tokenizer (so generation stops at its EOS)."""
    gguf_file = gguf_path_or_none(directory)
    if gguf_file is not None:  # a .gguf file or a real-model name: lmlab.io.gguf_read
        from lmlab.io.gguf_read import read_gguf_config

        return read_gguf_config(gguf_file)
    config = _read_hf_config(directory)
    return _fill_special_tokens(config, Path(directory))


def _fill_special_tokens(config: ModelConfig, d: Path) -> ModelConfig:
    if None not in (config.bos_token_id, config.eos_token_id, config.pad_token_id):
        return config
    gen = d / "generation_config.json"
    if gen.is_file():
        g = read_json(gen)
        if isinstance(g, dict):
            eos = g.get("eos_token_id")
            config = with_special_tokens(config, g.get("bos_token_id"), tuple(eos) if isinstance(eos, list) else eos,
                                         g.get("pad_token_id"))
    if (d / "tokenizer.json").is_file() and None in (config.bos_token_id, config.eos_token_id, config.pad_token_id):
        from lmlab.core.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(d)
        except LmlabError:
            return config  # a broken tokenizer is reported by whoever loads it; the weights are still usable
        config = with_special_tokens(config, tok.bos_id, tok.eos_id, tok.pad_id)
    return config


def _read_hf_config(directory: str | os.PathLike) -> ModelConfig:
    d = Path(directory)
    if not d.exists():
        raise LmlabError(f"{d}: no such directory")
    if not d.is_dir():
        raise LmlabError(f"{d}: expected a checkpoint directory, got a file")
    if not (d / "config.json").exists():
        found = ", ".join(sorted(p.name for p in d.iterdir())[:8]) or "nothing"
        raise LmlabError(f"{d} is not a Hugging Face checkpoint directory: missing config.json (found: {found})")
    return config_from_hf(read_json(d / "config.json"), where=str(d / "config.json"))


class _TensorSource:
    """The tensors of a checkpoint, across one or several safetensors files (or a weights_only .bin)."""

    def __init__(self, d: Path) -> None:
        self.files: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._bin: dict[str, torch.Tensor] | None = None
        index = d / "model.safetensors.index.json"
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise LmlabError(f"{index}: lacks a 'weight_map' object")
            self.files = {k: d / f for k, f in weight_map.items()}
        elif (d / "model.safetensors").exists():
            self.files = {k: d / "model.safetensors" for k in self._open(d / "model.safetensors").keys()}
        elif (d / "pytorch_model.bin").exists():
            # Legacy pickle format: only tensors are allowed out of it (weights_only=True), never code.
            try:
                self._bin = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - any unpickling failure is the user's file
                raise LmlabError(f"{d / 'pytorch_model.bin'}: cannot be read with weights_only=True ({err})") from None
            self.files = {k: d / "pytorch_model.bin" for k in self._bin}
        else:
            raise LmlabError(f"{d}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")

    def _open(self, path: Path):
        if path not in self._handles:
            if not path.exists():
                raise LmlabError(f"{path}: shard listed in the index is missing")
            try:
                self._handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as err:
                raise LmlabError(f"{path}: truncated or corrupt safetensors file ({err})") from None
        return self._handles[path]

    def keys(self) -> set[str]:
        return set(self.files)

    def get(self, key: str) -> torch.Tensor:
        if self._bin is not None:
            return self._bin[key]
        try:
            return self._open(self.files[key]).get_tensor(key)
        except SafetensorError as err:
            raise LmlabError(f"{self.files[key]}: cannot read tensor {key!r} ({err})") from None


def check_weight_files(directory: str | os.PathLike) -> dict[str, Any]:
    """Open every weight file of a checkpoint without reading tensor data: a truncated or corrupt header, a
    shard listed in the index but missing, or a file without tensors raises LmlabError naming the file.
    Returns ``{"files": [...], "tensors": n}``."""
    d = Path(directory)
    source = _TensorSource(d)
    files = sorted(set(source.files.values()))
    if source._bin is None:
        for f in files:
            source._open(f)
    if not source.files:
        raise LmlabError(f"{d}: the weight files hold no tensors")
    return {"files": [f.name for f in files], "tensors": len(source.files)}


def convert_from_hf(source: _TensorSource, c: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Our state dict from HF tensors, checking every key and shape."""
    kmap = key_map(c)
    present = source.keys()
    prefix = kmap.optional_prefix
    if prefix and not any(k.startswith(prefix) for k in present):
        # GPT-2 base-model checkpoints (GPT2Model) have no "transformer." prefix.
        present_full = {prefix + k if k != "lm_head.weight" else k: k for k in present}
    else:
        present_full = {k: k for k in present}
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for hf_key, rule, i in kmap.hf_keys(c):
        if hf_key not in present_full:
            raise LmlabError(f"{where}: missing tensor {hf_key!r} required by model_type {c.model_type!r}")
        used.add(hf_key)
        tensors = rule.transform.to_ours(source.get(present_full[hf_key]), c)
        for name, t in zip((o.format(i=i) if i is not None else o for o in rule.ours), tensors):
            state[name] = t
    tied_key = TIED_HEAD_KEYS[c.model_type]
    for key in present_full:
        if key in used or kmap.is_ignored(key) or kmap.is_ignored(present_full[key]):
            continue
        if c.tie_embeddings and key == tied_key:
            continue  # a stored copy of the tied embedding
        raise LmlabError(f"{where}: unexpected tensor {present_full[key]!r} (not part of a {c.model_type} model)")
    return state


def load_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu") -> Transformer:
    """Load an HF checkpoint directory into a Transformer in eval mode (dtype None = as stored).

    A ``.gguf`` file (or a name from ``lmlab.io.real_models``) is read by ``lmlab.io.gguf_read`` (dtype None = fp32).
    """
    gguf_file = gguf_path_or_none(path)
    if gguf_file is not None:
        from lmlab.io.gguf_read import load_gguf_model

        return load_gguf_model(gguf_file, dtype=dtype, device=device)
    d = Path(path)
    from lmlab.efficient.quant_io import is_quantized_checkpoint, load_quantized  # lazy: efficient imports io

    if is_quantized_checkpoint(d):
        return load_quantized(d, dtype=dtype, device=device)
    config = read_config(d)
    source = _TensorSource(d)
    state = convert_from_hf(source, config, str(d))
    target_dtype = parse_dtype(dtype)
    with torch.device("meta"):
        model = Transformer(config)
    expected = model.state_dict()
    for name, param in expected.items():
        if config.tie_embeddings and name == "lm_head.weight":
            continue
        if name not in state:
            raise LmlabError(f"{d}: no tensor provides parameter {name!r}")
        if tuple(state[name].shape) != tuple(param.shape):
            raise LmlabError(f"{d}: tensor for {name!r} has shape {tuple(state[name].shape)}, "
                             f"config.json implies {tuple(param.shape)}")
    stored_dtype = state["embed.weight"].dtype
    final = target_dtype or (stored_dtype if stored_dtype.is_floating_point else torch.float32)
    state = {k: v.to(device=device, dtype=final).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.eval()
    return model


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's tensors under HF names, contiguous and unshared, ready for safetensors."""
    c = model.config
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for hf_key, rule, i in key_map(c).hf_keys(c):
        names = [o.format(i=i) if i is not None else o for o in rule.ours]
        out[hf_key] = rule.transform.to_hf([ours[n] for n in names], c).detach().contiguous().clone()
    return out


def _stale_weight_files(d: Path) -> list[Path]:
    """Weight files of an earlier checkpoint in ``d`` that a new ``model.safetensors`` does not overwrite."""
    stale = [d / "model.safetensors.index.json"] if (d / "model.safetensors.index.json").is_file() else []
    return stale + [f for f in d.glob("model-*-of-*.safetensors") if f.is_file()]


def save_model(model: Transformer, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write an HF-layout directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

    Files are written to a temporary directory first and moved in one by one with ``os.replace``, so a
    crash never leaves a half-written ``model.safetensors``. BOS/EOS/PAD ids the model config lacks are taken
    from ``tokenizer`` and written to config.json and generation_config.json. Weight files of an earlier
    checkpoint in ``path`` (a sharded safetensors index and its shards) are removed, so no stale tensors
    stay beside the new ones.
    """
    from lmlab.io.output_paths import expect_directory_path

    d = expect_directory_path(path, "save:")
    if getattr(model, "quantization_config", None) is not None:
        from lmlab.efficient.quant_io import save_quantized  # lazy: efficient imports io

        return save_quantized(model, path, tokenizer)
    config = model.config
    if tokenizer is not None:
        config = with_special_tokens(config, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    d.mkdir(parents=True, exist_ok=True)
    hf_cfg = config_to_hf(config)
    hf_cfg["dtype"] = dtype_name(model.dtype)
    gen_cfg = generation_config_json(config)
    stale = _stale_weight_files(d)
    tmp = Path(tempfile.mkdtemp(prefix=".lmlab-save-", dir=d))
    try:
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if gen_cfg is not None:
            (tmp / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2, sort_keys=True) + "\n",
                                                        encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for f in tmp.iterdir():
            os.replace(f, d / f.name)
        for f in stale:
            f.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d
