"""What lmlab and llama.cpp agree on about GGUF files: architecture names, tensor names, rotary layouts.

Both directions (``gguf_read`` and ``gguf_write``) use these tables, so a name or a layout is written down once.
The ``gguf`` package (the format's own Python library) is an optional dependency, imported lazily with a
one-line error when it is missing: the core never needs it.

Tensor layouts, as llama.cpp's ``convert_hf_to_gguf.py`` writes them:
- Llama/Mistral (``llama``): q and k rows are permuted per head from HF's rotate-half order to the adjacent-pair
  order llama.cpp's "normal" rope wants; ``unpermute_rope`` undoes it on import.
- Qwen2 (``qwen2``) and GPT-NeoX (``gptneox``): llama.cpp rotates halves ("neox" rope), as HF does: no permute.
- GPT-2 (``gpt2``) and NeoX: one fused ``attn_qkv`` holding [q; k; v] stacked along the output rows (NeoX's
  per-head interleaved ``query_key_value`` is regrouped by the converter, GPT-2's Conv1D is transposed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.errors import LmlabError

GGUF_SUFFIX = ".gguf"

# GGUF general.architecture <-> lmlab model_type. Mistral is written as "llama", as llama.cpp's converter does;
# a sliding window, when the model has one, travels in "{arch}.attention.sliding_window".
ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "gpt2": "gpt2", "gptneox": "gpt_neox"}
MODEL_TYPE_TO_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt2": "gpt2", "gpt_neox": "gptneox"}

# llama.cpp's tensor-type names accepted by `lmlab convert --gguf-type`, and the general.file_type each implies.
EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType values


def is_gguf_path(path: str | os.PathLike) -> bool:
    """True for a path naming a GGUF file (dispatch is by suffix, as in llama.cpp's tools)."""
    return str(path).lower().endswith(GGUF_SUFFIX)


def require_gguf():
    """The ``gguf`` package, or a one-line error saying how to get it."""
    try:
        import gguf
    except ImportError:
        raise LmlabError("reading or writing GGUF files needs the 'gguf' package: pip install 'lmlab[gguf]' "
                         "(or pip install gguf)") from None
    return gguf


# ------------------------------------------------------------------------------------------------ rotary layouts
def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half rows -> llama.cpp adjacent pairs, per head: [n, 2, d/2, ...] -> [n, d/2, 2, ...]."""
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *rest).transpose(1, 2).reshape(w.shape)


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``permute_rope``: llama.cpp's adjacent pairs back to HF's halves."""
    rest = w.shape[1:]
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------------- tensor maps
@dataclass(frozen=True)
class TensorRule:
    """One GGUF tensor <-> one or more lmlab parameters.

    ``kind``: "copy"; "q" / "k" (Llama rope permute with n_heads / n_kv_heads); "qkv" (fused [q; k; v] rows).
    ``layered``: the names carry ``{i}``.
    """

    gguf: str
    ours: tuple[str, ...]
    kind: str = "copy"

    @property
    def layered(self) -> bool:
        return "{i}" in self.gguf


def _w_b(gguf: str, ours: str, weight: bool = True, bias: bool = False, kind: str = "copy") -> list[TensorRule]:
    out = [TensorRule(gguf + ".weight", (ours + ".weight",), kind)] if weight else []
    return out + ([TensorRule(gguf + ".bias", (ours + ".bias",), kind)] if bias else [])


def tensor_rules(arch: str, c) -> list[TensorRule]:
    """The GGUF tensors of ``arch`` for lmlab config ``c`` (a ModelConfig), in llama.cpp's names."""
    b = "blk.{i}."
    qkv = tuple(f"blocks.{{i}}.attn.{x}_proj" for x in "qkv")
    rules: list[TensorRule] = [TensorRule("token_embd.weight", ("embed.weight",))]
    if arch in ("llama", "qwen2"):
        permute = arch == "llama"
        rules += _w_b(b + "attn_norm", "blocks.{i}.ln1")
        rules += _w_b(b + "attn_q", "blocks.{i}.attn.q_proj", bias=c.qkv_bias, kind="q" if permute else "copy")
        rules += _w_b(b + "attn_k", "blocks.{i}.attn.k_proj", bias=c.qkv_bias, kind="k" if permute else "copy")
        rules += _w_b(b + "attn_v", "blocks.{i}.attn.v_proj", bias=c.qkv_bias)
        rules += _w_b(b + "attn_output", "blocks.{i}.attn.o_proj", bias=c.attn_out_bias)
        rules += _w_b(b + "ffn_norm", "blocks.{i}.ln2")
        rules += _w_b(b + "ffn_gate", "blocks.{i}.mlp.gate_proj", bias=c.mlp_bias)
        rules += _w_b(b + "ffn_up", "blocks.{i}.mlp.up_proj", bias=c.mlp_bias)
        rules += _w_b(b + "ffn_down", "blocks.{i}.mlp.down_proj", bias=c.mlp_bias)
        rules += _w_b("output_norm", "ln_final")
    elif arch in ("gpt2", "gptneox"):
        if arch == "gpt2":
            rules.append(TensorRule("position_embd.weight", ("pos_embed.weight",)))
        rules += _w_b(b + "attn_norm", "blocks.{i}.ln1", bias=True)
        rules.append(TensorRule(b + "attn_qkv.weight", tuple(q + ".weight" for q in qkv), "qkv"))
        if c.qkv_bias:
            rules.append(TensorRule(b + "attn_qkv.bias", tuple(q + ".bias" for q in qkv), "qkv"))
        rules += _w_b(b + "attn_output", "blocks.{i}.attn.o_proj", bias=c.attn_out_bias)
        rules += _w_b(b + "ffn_norm", "blocks.{i}.ln2", bias=True)
        rules += _w_b(b + "ffn_up", "blocks.{i}.mlp.up_proj", bias=c.mlp_bias)
        rules += _w_b(b + "ffn_down", "blocks.{i}.mlp.down_proj", bias=c.mlp_bias)
        rules += _w_b("output_norm", "ln_final", bias=True)
    else:
        raise LmlabError(f"GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCH_TO_MODEL_TYPE)})")
    if not c.tie_embeddings:
        rules.append(TensorRule("output.weight", ("lm_head.weight",)))
    return rules


def expand(rules: list[TensorRule], n_layers: int):
    """(gguf_name, our_names, rule) for every layer."""
    for rule in rules:
        for i in (range(n_layers) if rule.layered else [None]):
            if i is None:
                yield rule.gguf, rule.ours, rule
            else:
                yield rule.gguf.format(i=i), tuple(o.format(i=i) for o in rule.ours), rule


def to_ours(rule: TensorRule, t: torch.Tensor, c) -> list[torch.Tensor]:
    """A GGUF tensor (numpy order, [out, in]) as lmlab parameters."""
    if rule.kind == "q":
        return [unpermute_rope(t, c.n_heads)]
    if rule.kind == "k":
        return [unpermute_rope(t, c.kv_heads)]
    if rule.kind == "qkv":
        q_rows, kv_rows = c.n_heads * c.head_dim, c.kv_heads * c.head_dim
        return list(t.split([q_rows, kv_rows, kv_rows], dim=0))
    return [t]


def to_gguf(rule: TensorRule, ts: list[torch.Tensor], c) -> torch.Tensor:
    """lmlab parameters as the one GGUF tensor llama.cpp expects."""
    if rule.kind == "q":
        return permute_rope(ts[0], c.n_heads)
    if rule.kind == "k":
        return permute_rope(ts[0], c.kv_heads)
    if rule.kind == "qkv":
        return torch.cat(ts, dim=0)
    return ts[0]


def gguf_path_or_none(path: str | os.PathLike) -> Path | None:
    """The GGUF file ``path`` stands for: a ``*.gguf`` path, or a registered real-model name; else None."""
    if is_gguf_path(path):
        return Path(path)
    from lmlab.io.real_models import resolve_name

    return resolve_name(path)
