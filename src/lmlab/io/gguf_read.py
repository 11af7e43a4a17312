"""Read GGUF files (llama.cpp's format) as lmlab models: config, dequantised tensors, tokenizer.

``lmlab.load("model.gguf")`` lands here. The ``gguf`` package parses the file and dequantises every tensor type
it knows (F32/F16/BF16, Q4_0/Q4_1/Q5_x/Q8_0, the K-quants...) to float32; lmlab then converts the tensors to its
own names and layouts (``gguf_format``) and casts them to the requested dtype. Everything the file says that
lmlab cannot compute faithfully (an architecture, a rope scaling, a tensor it does not know) is refused with a
one-line error naming it, never ignored.
"""

from __future__ import annotations

import functools
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.core.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.io.gguf_format import ARCH_TO_MODEL_TYPE, expand, require_gguf, tensor_rules, to_ours

_MISSING = object()


@functools.cache
def _reader_class():
    """gguf's GGUFReader over a plain ndarray view of its memory map.

    Same parser, same bytes (still memory-mapped, nothing copied); slicing a plain ndarray skips
    ``np.memmap``'s per-slice bookkeeping, which made reading SmolLM2's 98k-string vocabulary ~2.5x slower.
    """
    gguf = require_gguf()

    class Reader(gguf.GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._plain = value.view(np.ndarray)

    return Reader


class GGUFFile:
    """One parsed GGUF file: metadata by key, tensors by name; every parse problem is an ``LmlabError``."""

    def __init__(self, path: str | os.PathLike) -> None:
        require_gguf()  # first: a missing optional package is the one-line error, whatever the path
        self.path = Path(path)
        if not self.path.exists():
            raise LmlabError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise LmlabError(f"{self.path}: expected a .gguf file, got a directory")
        size = self.path.stat().st_size
        try:
            self.reader = _reader_class()(str(self.path))
        except Exception as err:  # noqa: BLE001 - numpy/struct errors on a damaged file; name the file instead
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LmlabError(f"{self.path}: truncated or corrupt GGUF file ({size} bytes; {detail})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise LmlabError(f"{self.path}: truncated GGUF file (tensor {t.name!r} ends past byte {size})")

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """A metadata value as Python (str, int, float, bool, list); ``default`` or an error when absent."""
        field = self.reader.fields.get(key)
        if field is None:
            if default is _MISSING:
                raise LmlabError(f"{self.path}: GGUF metadata lacks required key {key!r}")
            return default
        try:
            return field.contents()
        except Exception as err:  # noqa: BLE001
            raise LmlabError(f"{self.path}: cannot read GGUF metadata key {key!r} ({err})") from None

    @cached_property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if arch not in ARCH_TO_MODEL_TYPE:
            raise LmlabError(f"{self.path}: GGUF architecture {arch!r} is not supported "
                             f"(supported: {', '.join(ARCH_TO_MODEL_TYPE)})")
        return arch

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor dequantised to float32, in numpy order ([out, in] for a weight)."""
        gguf = require_gguf()
        t = self.tensors.get(name)
        if t is None:
            raise LmlabError(f"{self.path}: missing tensor {name!r}")
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise LmlabError(f"{self.path}: tensor {name!r} has quantization type {t.tensor_type.name}, "
                             "which the gguf package cannot dequantize") from None
        expected = tuple(int(d) for d in reversed(t.shape.tolist()))
        array = np.asarray(array, dtype=np.float32).reshape(expected)
        return torch.from_numpy(array.copy())


def _scalar(f: GGUFFile, key: str, default: Any = _MISSING) -> Any:
    """A per-model scalar; llama.cpp allows per-layer arrays for a few keys, which lmlab accepts when uniform."""
    value = f.get(key, default)
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise LmlabError(f"{f.path}: GGUF key {key!r} varies per layer ({value[:4]}...), which lmlab does not support")
        value = value[0]
    return value


def _rope_scaling(f: GGUFFile, arch: str) -> dict[str, Any]:
    if "rope_freqs.weight" in f.tensors:
        raise LmlabError(f"{f.path}: tensor 'rope_freqs.weight' (per-frequency rope factors, e.g. Llama 3.1) "
                         "is not supported")
    kind = f.get(f"{arch}.rope.scaling.type", "none")
    if kind in ("none", ""):
        return {"rope_scaling": "default", "rope_scaling_params": ()}
    if kind == "linear":
        return {"rope_scaling": "linear",
                "rope_scaling_params": (("factor", float(f.get(f"{arch}.rope.scaling.factor"))),)}
    raise LmlabError(f"{f.path}: rope scaling type {kind!r} is not supported (supported: none, linear)")


def _token_ids(f: GGUFFile) -> dict[str, Any]:
    ids = {name: f.get(f"tokenizer.ggml.{key}", None) for name, key in
           (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id"))}
    return {k: (int(v) if v is not None else None) for k, v in ids.items()}


def config_from_gguf(f: GGUFFile) -> ModelConfig:
    """The ModelConfig a GGUF file describes (by its ``general.architecture`` only)."""
    arch = f.architecture
    p = arch + "."
    d_model = int(f.get(p + "embedding_length"))
    n_heads = int(_scalar(f, p + "attention.head_count"))
    head_dim = int(f.get(p + "attention.key_length", d_model // n_heads))
    embed = f.tensors.get("token_embd.weight")
    if embed is None:
        raise LmlabError(f"{f.path}: missing tensor 'token_embd.weight'")
    vocab = int(f.get(p + "vocab_size", int(embed.shape[1])))
    has = f.tensors.__contains__
    common = dict(vocab_size=vocab, d_model=d_model, n_layers=int(f.get(p + "block_count")), n_heads=n_heads,
                  d_mlp=int(_scalar(f, p + "feed_forward_length")),
                  max_seq_len=int(f.get(p + "context_length", 2048)), tie_embeddings=not has("output.weight"),
                  **_token_ids(f))
    if arch in ("llama", "qwen2"):
        rot = int(f.get(p + "rope.dimension_count", head_dim))
        if arch == "llama" and rot != head_dim:
            raise LmlabError(f"{f.path}: llama.rope.dimension_count {rot} differs from the head size {head_dim} "
                             "(partial rotary in llama.cpp's pair layout is not supported)")
        window = f.get(p + "attention.sliding_window", None)
        model_type = "mistral" if arch == "llama" and window else ARCH_TO_MODEL_TYPE[arch]
        fields = dict(n_kv_heads=int(_scalar(f, p + "attention.head_count_kv", n_heads)), d_head=head_dim,
                      norm_type="rmsnorm", norm_eps=float(f.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
                      pos_type="rotary", rope_style="half", rotary_dim=rot,
                      rope_base=float(f.get(p + "rope.freq_base", 10000.0)), **_rope_scaling(f, arch),
                      mlp_type="gated", activation="silu", qkv_bias=has("blk.0.attn_q.bias"),
                      attn_out_bias=has("blk.0.attn_output.bias"), mlp_bias=has("blk.0.ffn_up.bias"),
                      sliding_window=int(window) if window else None)
        if arch == "qwen2" and window:
            fields["sliding_window_layers"] = (True,) * common["n_layers"]
    elif arch == "gpt2":
        model_type = "gpt2"
        fields = dict(norm_type="layernorm", norm_eps=float(f.get(p + "attention.layer_norm_epsilon", 1e-5)),
                      norm_bias=True, pos_type="learned", mlp_type="plain", activation="gelu_new",
                      qkv_bias=has("blk.0.attn_qkv.bias"), attn_out_bias=has("blk.0.attn_output.bias"),
                      mlp_bias=has("blk.0.ffn_up.bias"))
    else:  # gptneox
        model_type = "gpt_neox"
        bias = has("blk.0.attn_qkv.bias")
        fields = dict(norm_type="layernorm", norm_eps=float(f.get(p + "attention.layer_norm_epsilon", 1e-5)),
                      norm_bias=True, pos_type="rotary", rope_style="half",
                      rotary_dim=int(f.get(p + "rope.dimension_count", head_dim)),
                      rope_base=float(f.get(p + "rope.freq_base", 10000.0)), **_rope_scaling(f, arch),
                      parallel_residual=bool(f.get(p + "use_parallel_residual", True)), mlp_type="plain",
                      activation="gelu", qkv_bias=bias, attn_out_bias=has("blk.0.attn_output.bias"), mlp_bias=True)
    try:
        return ModelConfig(model_type=model_type, **common, **fields)
    except (LmlabError, TypeError) as err:
        raise LmlabError(f"{f.path}: {err}") from None


def read_gguf_config(path: str | os.PathLike) -> ModelConfig:
    return config_from_gguf(GGUFFile(path))


def load_gguf_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
                    device: str | torch.device = "cpu"):
    """A Transformer in eval mode from a GGUF file; tensors dequantised, then cast to ``dtype`` (default float32)."""
    from lmlab.core.model import Transformer
    from lmlab.io.files import parse_dtype

    f = GGUFFile(path)
    config = config_from_gguf(f)
    final = parse_dtype(dtype) or torch.float32
    rules = tensor_rules(f.architecture, config)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, ours, rule in expand(rules, config.n_layers):
        used.add(name)
        for our_name, t in zip(ours, to_ours(rule, f.tensor(name), config)):
            state[our_name] = t.to(device=device, dtype=final).contiguous()
    unexpected = sorted(set(f.tensors) - used)
    if unexpected:
        raise LmlabError(f"{f.path}: unexpected tensor {unexpected[0]!r} (not part of a {f.architecture} model "
                         "lmlab can build)")
    with torch.device("meta"):
        model = Transformer(config)
    for name, param in model.state_dict().items():
        if config.tie_embeddings and name == "lm_head.weight":
            continue
        if name not in state:
            raise LmlabError(f"{f.path}: no tensor provides parameter {name!r}")
        if tuple(state[name].shape) != tuple(param.shape):
            raise LmlabError(f"{f.path}: tensor for {name!r} has shape {tuple(state[name].shape)}, the metadata "
                             f"implies {tuple(param.shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.eval()
    return model


def load_gguf_tokenizer(path: str | os.PathLike):
    """The tokenizer a GGUF file carries (vocabulary, merges, special tokens, chat template)."""
    from lmlab.io.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(GGUFFile(path))
