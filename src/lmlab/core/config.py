"""ModelConfig: the one description of an architecture that the Transformer reads.

Every family difference is an explicit field, so the model never branches on a model's name. A config is
built from a Hugging Face ``config.json`` by its ``model_type`` (see ``lmlab.io.hf_config``) or directly
(``ModelConfig.llama_like(...)`` for models trained from scratch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lmlab.core.rope_scaling import ROPE_SCALINGS, check_rope_scaling
from lmlab.errors import LmlabError

NORM_TYPES = ("layernorm", "rmsnorm")
POS_TYPES = ("learned", "rotary")
ROPE_STYLES = ("half", "interleaved")
MLP_TYPES = ("plain", "gated")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters, named in the interpretability vocabulary (d_model, n_heads, ...).

    ``model_type`` records the HF family for export; the forward pass never reads it.
    """

    model_type: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    n_kv_heads: int | None = None  # None -> n_heads (MHA); fewer -> GQA/MQA
    d_head: int | None = None  # None -> d_model // n_heads
    max_seq_len: int = 2048
    # normalisation
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    # positions
    pos_type: str = "rotary"
    rope_style: str = "half"  # "half": rotate halves (NeoX/Llama); "interleaved": rotate pairs (GPT-J)
    rotary_dim: int | None = None  # None -> d_head; dims of each head that get rotated (the first ones)
    rope_base: float = 10000.0
    rope_scaling: str = "default"
    # HF rope_parameters names -> number, bool or tuple of numbers (longrope factors), e.g. (("factor", 8.0), ...)
    rope_scaling_params: tuple[tuple[str, Any], ...] = ()
    # block layout
    parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln2 x)
    shared_block_norm: bool = False  # GPT-J: one norm feeds both attention and MLP
    # MLP
    mlp_type: str = "gated"
    activation: str = "silu"
    # biases
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm has a bias; RMSNorm does not
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    # attention window: None = full; per-layer tuple lets some layers slide (Qwen2 layer_types)
    sliding_window: int | None = None
    sliding_window_layers: tuple[bool, ...] | None = None
    # token ids (for generation defaults and export)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    # everything from config.json we do not interpret, kept for faithful export
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise LmlabError(f"model config: {what}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_mlp", "max_seq_len"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        need(self.norm_type in NORM_TYPES, f"norm_type {self.norm_type!r} is not one of {NORM_TYPES}")
        need(self.pos_type in POS_TYPES, f"pos_type {self.pos_type!r} is not one of {POS_TYPES}")
        need(self.rope_style in ROPE_STYLES, f"rope_style {self.rope_style!r} is not one of {ROPE_STYLES}")
        need(self.mlp_type in MLP_TYPES, f"mlp_type {self.mlp_type!r} is not one of {MLP_TYPES}")
        need(self.activation in ACTIVATIONS, f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        need(self.rope_scaling in ROPE_SCALINGS, f"rope scaling {self.rope_scaling!r} is not one of {ROPE_SCALINGS}")
        if self.d_head is None:
            need(self.d_model % self.n_heads == 0, f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        need(self.n_heads % self.kv_heads == 0, f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        need(0 < self.rot_dim <= self.head_dim and self.rot_dim % 2 == 0 or self.pos_type == "learned",
             f"rotary_dim {self.rotary_dim} must be even and at most d_head {self.head_dim}")
        need(not self.shared_block_norm or self.parallel_residual,
             "shared_block_norm (one norm feeding attention and MLP, GPT-J) needs parallel_residual=True: a "
             "sequential block normalises the MLP input after attention, so it needs its own norm")
        # lists (from JSON / YAML) become tuples, so the frozen config stays hashable
        object.__setattr__(self, "rope_scaling_params", tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in self.rope_scaling_params))
        try:
            check_rope_scaling(self.rope_scaling, dict(self.rope_scaling_params), self.rot_dim,
                               self.pos_type == "rotary", self.max_seq_len)
        except LmlabError as err:
            raise LmlabError(f"model config: {err}") from None
        if self.sliding_window_layers is not None:
            need(len(self.sliding_window_layers) == self.n_layers,
                 f"sliding_window_layers has {len(self.sliding_window_layers)} entries for {self.n_layers} layers")

    # Derived sizes; properties keep the dataclass the single source of truth.
    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def rot_dim(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else self.head_dim

    def window_for_layer(self, layer: int) -> int | None:
        """The attention window of one layer (None = attend to the whole prefix)."""
        if self.sliding_window is None:
            return None
        if self.sliding_window_layers is None or self.sliding_window_layers[layer]:
            return self.sliding_window
        return None

    @property
    def extra_dict(self) -> dict[str, Any]:
        return dict(self.extra)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        return out

    @classmethod
    def llama_like(cls, vocab_size: int, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                   n_kv_heads: int | None = None, d_mlp: int | None = None, max_seq_len: int = 512,
                   tie_embeddings: bool = True, **overrides: Any) -> "ModelConfig":
        """A Llama-style config for training from scratch (RMSNorm, RoPE, SwiGLU, no biases).

        d_mlp defaults to the Llama rule: 8/3 * d_model rounded up to a multiple of 32.
        """
        if d_mlp is None:
            d_mlp = -(-int(8 * d_model / 3) // 32) * 32
        return cls(model_type="llama", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers,
                   n_heads=n_heads, n_kv_heads=n_kv_heads, d_mlp=d_mlp, max_seq_len=max_seq_len,
                   tie_embeddings=tie_embeddings, **overrides)
