"""Write lmlab models as GGUF files that llama.cpp runs: ``lmlab convert SRC OUT.gguf --gguf-type q8_0``.

Metadata, tensor names and layouts follow llama.cpp's ``convert_hf_to_gguf.py`` for each architecture (see
``gguf_format``): Llama q/k rows permuted to llama.cpp's rope-pair order, fused [q; k; v] for GPT-2 / NeoX,
norms and biases kept in F32, every 2-D weight stored in the requested type (quantized with the ``gguf``
package's own Q8_0 / Q4_0 / BF16 code). A weight whose rows are not a multiple of the 32-value block falls back
to F16, as llama.cpp's converter does. The model is exported as it computes *now*: an applied edit is in its
weights; an unmerged adapter or a packed inference weight is refused (merge or unpack first).

The file is written to a temporary name beside the target and renamed into place; an existing target is never
overwritten.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.io.gguf_format import (
    EXPORT_TYPES,
    FILE_TYPES,
    MODEL_TYPE_TO_ARCH,
    expand,
    require_gguf,
    tensor_rules,
    to_gguf,
)

QUANT_BLOCK = 32  # values per Q8_0 / Q4_0 block (gguf.GGML_QUANT_SIZES)


def _check_exportable(c, where: str) -> str:
    if c.model_type not in MODEL_TYPE_TO_ARCH:
        raise LmlabError(f"{where}: model_type {c.model_type!r} has no GGUF export (supported: "
                         f"{', '.join(MODEL_TYPE_TO_ARCH)})")
    arch = MODEL_TYPE_TO_ARCH[c.model_type]
    if c.rope_scaling not in ("default", "linear"):
        raise LmlabError(f"{where}: rope scaling {c.rope_scaling!r} cannot be written to GGUF (only default, linear)")
    if arch == "llama" and c.rot_dim != c.head_dim:
        raise LmlabError(f"{where}: partial rotary ({c.rot_dim} of {c.head_dim} dims) has no llama GGUF layout")
    if c.sliding_window_layers is not None and len(set(c.sliding_window_layers)) > 1:
        raise LmlabError(f"{where}: a sliding window on only some layers cannot be written to GGUF")
    return arch


def _add_model_metadata(w, arch: str, c, gguf_type: str) -> None:
    gguf = require_gguf()
    w.add_name("lmlab export")
    w.add_file_type(FILE_TYPES[gguf_type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.d_mlp)
    w.add_head_count(c.n_heads)
    if arch in ("llama", "qwen2"):
        w.add_head_count_kv(c.kv_heads)
        w.add_layer_norm_rms_eps(c.norm_eps)
    else:
        w.add_layer_norm_eps(c.norm_eps)
    if c.head_dim * c.n_heads != c.d_model:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if c.pos_type == "rotary":
        w.add_rope_dimension_count(c.rot_dim)
        w.add_rope_freq_base(c.rope_base)
        if c.rope_scaling == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(dict(c.rope_scaling_params)["factor"])
    if arch == "gptneox":
        w.add_parallel_residual(c.parallel_residual)
    if c.sliding_window is not None:
        w.add_sliding_window(c.sliding_window)


def _add_tokenizer_metadata(w, tokenizer, c, where: str) -> None:
    if tokenizer is None:
        # llama.cpp loads a vocabulary-less model ("none"); the ids still let it stop on EOS.
        w.add_tokenizer_model("none")
        for add, token_id in ((w.add_bos_token_id, c.bos_token_id), (w.add_pad_token_id, c.pad_token_id),
                              (w.add_eos_token_id, c.eos_token_id[0] if isinstance(c.eos_token_id, tuple)
                               else c.eos_token_id)):
            if token_id is not None:
                add(int(token_id))
        return
    from lmlab.io.gguf_tokenizer import tokenizer_metadata

    meta = tokenizer_metadata(tokenizer, c.vocab_size, where)
    w.add_tokenizer_model(meta["model"])
    w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["token_type"])
    w.add_token_merges(meta["merges"])
    adders = {"bos_token_id": w.add_bos_token_id, "eos_token_id": w.add_eos_token_id,
              "padding_token_id": w.add_pad_token_id, "unknown_token_id": w.add_unk_token_id}
    for key, token_id in meta["ids"].items():
        adders[key](int(token_id))
    w.add_add_bos_token(meta["add_bos_token"])
    w.add_add_eos_token(meta["add_eos_token"])
    if meta["chat_template"] is not None:
        w.add_chat_template(meta["chat_template"])


def encode_tensor(array: np.ndarray, gguf_type: str) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for ``GGUFWriter.add_tensor``: 1-D stays F32; 2-D in ``gguf_type`` (F16 if rows misfit)."""
    gguf = require_gguf()
    Q = gguf.GGMLQuantizationType
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or gguf_type == "f32":
        return array, None
    if gguf_type == "f16" or (gguf_type in ("q8_0", "q4_0") and array.shape[-1] % QUANT_BLOCK):
        return array.astype(np.float16), None
    qtype = {"bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[gguf_type]
    return gguf.quants.quantize(array, qtype), qtype


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """The model's tensors under llama.cpp's names and layouts (float32, [out, in] for weights)."""
    c = model.config
    arch = _check_exportable(c, "export")
    for module_name, module in model.named_modules():
        slot = getattr(module, "adapters", None)  # lmlab.peft's AdapterSlot: current() = applied and not merged
        if slot is not None and callable(getattr(slot, "current", None)) and slot.current() is not None:
            raise LmlabError(f"export: module {module_name!r} applies an unmerged adapter; merge it first "
                             "(lmlab.peft.merge_adapter) or disable it")
    # Adapter tensors are either merged into the weights already or not applied: neither is exported.
    state = {k: v for k, v in model.state_dict().items() if ".adapters." not in k}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, ours, rule in expand(tensor_rules(arch, c), c.n_layers):
        missing = [o for o in ours if o not in state]
        if missing:
            raise LmlabError(f"export: the model has no parameter {missing[0]!r} (wrapped by an adapter or packed "
                             "for inference? merge or unpack it first)")
        used.update(ours)
        out[name] = to_gguf(rule, [state[o].detach().float().cpu() for o in ours], c).contiguous()
    if c.tie_embeddings:
        used.add("lm_head.weight")
    extra = sorted(k for k in state if k not in used)
    if extra:
        raise LmlabError(f"export: parameter {extra[0]!r} has no place in a GGUF {arch} model (an unmerged adapter? "
                         "merge it first)")
    return out


def save_gguf(model, path: str | os.PathLike, gguf_type: str = "f32", tokenizer=None) -> Path:
    """Write ``model`` (and its tokenizer, when given) as a GGUF file; refuses to overwrite an existing file."""
    gguf = require_gguf()
    target = Path(path)
    if gguf_type not in EXPORT_TYPES:
        raise LmlabError(f"GGUF type {gguf_type!r} is not one of {', '.join(EXPORT_TYPES)}")
    if target.exists():
        raise LmlabError(f"{target} already exists; refusing to overwrite it (remove it or pick another name)")
    if not target.parent.is_dir():
        raise LmlabError(f"{target.parent}: no such directory")
    c = model.config
    arch = _check_exportable(c, str(target))
    tensors = gguf_tensors(model)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        _add_model_metadata(w, arch, c, gguf_type)
        _add_tokenizer_metadata(w, tokenizer, c, str(target))
        for name, t in tensors.items():
            data, raw_dtype = encode_tensor(t.numpy(), gguf_type)
            w.add_tensor(name, data, raw_dtype=raw_dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if target.exists():  # appeared while we wrote: still never overwrite
            raise LmlabError(f"{target} already exists; refusing to overwrite it")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
