"""Translate Hugging Face ``config.json`` dicts to ``ModelConfig`` and back, by ``model_type``.

One reader and one writer per family. Fields that change the computation and that we do not implement
are refused with an error naming them, rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Callable

from lmlab.core.config import ModelConfig
from lmlab.core.rope_scaling import ROPE_SCALINGS
from lmlab.errors import LmlabError

# HF keys we read (or knowingly ignore because they do not change inference) per family are listed in
# the readers; everything else is carried in ModelConfig.extra and written back unchanged on export.
_NEVER_EXPORT = {"transformers_version", "dtype", "torch_dtype", "architectures", "model_type"}


def _get(d: dict, *names: str, default: Any = ..., where: str) -> Any:
    for name in names:
        if name in d and d[name] is not None:
            return d[name]
    if default is ...:
        raise LmlabError(f"{where}: config.json lacks required field {names[0]!r}")
    return default


def _rope_param(value: Any) -> Any:
    """A rope parameter as ModelConfig keeps it: numbers and bools as they are, lists as tuples (hashable)."""
    if isinstance(value, list):
        return tuple(value)
    return value


def _rope(d: dict, where: str) -> dict[str, Any]:
    """Rope base, scaling type and params from either v4 (rope_theta/rope_scaling) or v5 (rope_parameters)."""
    params = dict(d.get("rope_parameters") or {})
    scaling = dict(d.get("rope_scaling") or {})
    if params and scaling:  # both present: refuse a disagreement rather than silently keep one of them
        kinds = [(x.get("rope_type", x.get("type", "default")) or "default") for x in (params, scaling)]
        if kinds[0] != kinds[1]:
            raise LmlabError(f"{where}: rope_parameters says rope_type {kinds[0]!r} but rope_scaling says {kinds[1]!r}; "
                             "keep one of them")
    params = {**scaling, **params}
    base = params.pop("rope_theta", d.get("rope_theta", d.get("rotary_emb_base", 10000.0)))
    kind = params.pop("rope_type", params.pop("type", "default")) or "default"
    partial = params.pop("partial_rotary_factor", d.get("partial_rotary_factor", d.get("rotary_pct")))
    if kind not in ROPE_SCALINGS:
        raise LmlabError(f"{where}: rope scaling type {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})")
    kept = tuple(sorted((k, _rope_param(v)) for k, v in params.items()
                        if isinstance(v, (int, float, list)) and not (isinstance(v, list) and k not in _LIST_PARAMS)))
    return {"rope_base": float(base), "rope_scaling": kind, "rope_scaling_params": kept if kind != "default" else (),
            "partial": partial}


_LIST_PARAMS = ("short_factor", "long_factor")


def _no_rope_scaling(d: dict, where: str) -> None:
    """GPT-2 (learned positions) and GPT-J (transformers' GPT-J has fixed sinusoidal rotary tables) take no
    rope scaling: refuse one rather than drop it silently."""
    for key in ("rope_scaling", "rope_parameters"):
        value = d.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type", "default")) or "default"
            if kind != "default":
                raise LmlabError(f"{where}: model_type {d.get('model_type')!r} cannot use rope scaling {kind!r} "
                                 f"({key}); only llama, mistral, qwen2 and gpt_neox can")


def _tokens(d: dict) -> dict[str, Any]:
    eos = d.get("eos_token_id")
    return {"bos_token_id": d.get("bos_token_id"), "pad_token_id": d.get("pad_token_id"),
            "eos_token_id": tuple(eos) if isinstance(eos, list) else eos}


def _refuse(d: dict, where: str, **expected: Any) -> None:
    for key, ok in expected.items():
        if key in d and d[key] is not None and d[key] != ok:
            raise LmlabError(f"{where}: config field {key}={d[key]!r} is not supported (only {ok!r})")


def _gpt2(d: dict, where: str) -> dict[str, Any]:
    _no_rope_scaling(d, where)
    _refuse(d, where, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
            scale_attn_weights=True, add_cross_attention=False)
    n_embd = _get(d, "n_embd", where=where)
    return dict(vocab_size=_get(d, "vocab_size", where=where), d_model=n_embd, n_layers=_get(d, "n_layer", where=where),
                n_heads=_get(d, "n_head", where=where), d_mlp=d.get("n_inner") or 4 * n_embd,
                max_seq_len=_get(d, "n_positions", "n_ctx", default=1024, where=where),
                norm_type="layernorm", norm_eps=d.get("layer_norm_epsilon", 1e-5), norm_bias=True,
                pos_type="learned", mlp_type="plain", activation=d.get("activation_function", "gelu_new"),
                qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=d.get("tie_word_embeddings", True))


def _gptj(d: dict, where: str) -> dict[str, Any]:
    _no_rope_scaling(d, where)
    n_embd = _get(d, "n_embd", where=where)
    n_head = _get(d, "n_head", where=where)
    return dict(vocab_size=_get(d, "vocab_size", where=where), d_model=n_embd, n_layers=_get(d, "n_layer", where=where),
                n_heads=n_head, d_mlp=d.get("n_inner") or 4 * n_embd, max_seq_len=d.get("n_positions", 2048),
                norm_type="layernorm", norm_eps=d.get("layer_norm_epsilon", 1e-5), norm_bias=True,
                pos_type="rotary", rope_style="interleaved", rotary_dim=d.get("rotary_dim") or n_embd // n_head,
                parallel_residual=True, shared_block_norm=True, mlp_type="plain",
                activation=d.get("activation_function", "gelu_new"), mlp_bias=True, lm_head_bias=True,
                tie_embeddings=d.get("tie_word_embeddings", False))


def _neox(d: dict, where: str) -> dict[str, Any]:
    hidden = _get(d, "hidden_size", where=where)
    heads = _get(d, "num_attention_heads", where=where)
    rope = _rope(d, where)
    partial = rope.pop("partial") or 1.0
    head_dim = hidden // heads
    bias = d.get("attention_bias", True)
    return dict(vocab_size=_get(d, "vocab_size", where=where), d_model=hidden,
                n_layers=_get(d, "num_hidden_layers", where=where), n_heads=heads,
                d_mlp=_get(d, "intermediate_size", where=where), max_seq_len=d.get("max_position_embeddings", 2048),
                norm_type="layernorm", norm_eps=d.get("layer_norm_eps", 1e-5), norm_bias=True,
                pos_type="rotary", rope_style="half", rotary_dim=int(head_dim * partial), **rope,
                parallel_residual=d.get("use_parallel_residual", True), mlp_type="plain",
                activation=d.get("hidden_act", "gelu"), qkv_bias=bias, attn_out_bias=bias, mlp_bias=True,
                tie_embeddings=d.get("tie_word_embeddings", False))


def _llama_family(d: dict, where: str, qkv_bias_default: bool) -> dict[str, Any]:
    _refuse(d, where, pretraining_tp=1)
    hidden = _get(d, "hidden_size", where=where)
    heads = _get(d, "num_attention_heads", where=where)
    rope = _rope(d, where)
    partial = rope.pop("partial") or 1.0
    head_dim = d.get("head_dim") or hidden // heads
    window = d.get("sliding_window")
    layers = _get(d, "num_hidden_layers", where=where)
    window_layers = None
    if d.get("model_type") == "qwen2":
        # Qwen2 slides only where layer_types says so (older configs: use_sliding_window + max_window_layers).
        types = d.get("layer_types")
        if types is not None:
            window_layers = tuple(t == "sliding_attention" for t in types)
        elif d.get("use_sliding_window"):
            window_layers = tuple(i >= d.get("max_window_layers", layers) for i in range(layers))
        else:
            window_layers = (False,) * layers
        if not any(window_layers):
            window, window_layers = None, None
    attn_bias = d.get("attention_bias", qkv_bias_default)
    return dict(vocab_size=_get(d, "vocab_size", where=where), d_model=hidden, n_layers=layers, n_heads=heads,
                n_kv_heads=d.get("num_key_value_heads") or heads, d_head=head_dim,
                d_mlp=_get(d, "intermediate_size", where=where), max_seq_len=d.get("max_position_embeddings", 2048),
                norm_type="rmsnorm", norm_eps=d.get("rms_norm_eps", 1e-6), pos_type="rotary", rope_style="half",
                rotary_dim=int(head_dim * partial), **rope, mlp_type="gated", activation=d.get("hidden_act", "silu"),
                qkv_bias=attn_bias, attn_out_bias=attn_bias and d.get("model_type") != "qwen2",
                mlp_bias=d.get("mlp_bias", False), tie_embeddings=d.get("tie_word_embeddings", False),
                sliding_window=window, sliding_window_layers=window_layers)


READERS: dict[str, Callable[[dict, str], dict[str, Any]]] = {
    "gpt2": _gpt2,
    "gptj": _gptj,
    "gpt_neox": _neox,
    "llama": lambda d, w: _llama_family(d, w, qkv_bias_default=False),
    "mistral": lambda d, w: _llama_family(d, w, qkv_bias_default=False),
    "qwen2": lambda d, w: {**_llama_family(d, w, qkv_bias_default=True), "qkv_bias": True},
}
SUPPORTED_MODEL_TYPES = tuple(READERS)

# Keys each reader consumes; the rest go to ModelConfig.extra for round-tripping.
_CONSUMED = {
    "vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx", "layer_norm_epsilon",
    "activation_function", "tie_word_embeddings", "rotary_dim", "hidden_size", "num_attention_heads",
    "num_hidden_layers", "intermediate_size", "max_position_embeddings", "layer_norm_eps", "rope_parameters",
    "rope_scaling", "rope_theta", "rotary_emb_base", "rotary_pct", "partial_rotary_factor",
    "use_parallel_residual", "hidden_act", "attention_bias", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "mlp_bias", "sliding_window", "layer_types", "use_sliding_window", "max_window_layers",
    "bos_token_id", "eos_token_id", "pad_token_id",
}


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a parsed HF config.json, choosing the family by ``model_type`` only."""
    if not isinstance(d, dict):
        raise LmlabError(f"{where}: expected a JSON object")
    model_type = d.get("model_type")
    if model_type not in READERS:
        raise LmlabError(f"{where}: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    fields = READERS[model_type](d, where)
    extra = tuple(sorted((k, v) for k, v in d.items() if k not in _CONSUMED and k not in _NEVER_EXPORT))
    try:
        return ModelConfig(model_type=model_type, **fields, **_tokens(d), extra=extra)
    except (TypeError, LmlabError) as err:  # a field of the wrong JSON type, or an unusable value
        raise LmlabError(f"{where}: {err}") from None


def _rope_out(c: ModelConfig, partial: float | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_theta": c.rope_base, "rope_type": c.rope_scaling,
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in c.rope_scaling_params}}
    if partial is not None and partial != 1.0:
        params["partial_rotary_factor"] = partial
    return {"rope_parameters": params}


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    """The HF config.json for a ModelConfig, so ``transformers`` rebuilds the same computation."""
    if c.model_type not in READERS:
        raise LmlabError(f"model_type {c.model_type!r} cannot be exported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    out: dict[str, Any] = dict(c.extra)
    common = {"vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings,
              "bos_token_id": c.bos_token_id, "pad_token_id": c.pad_token_id,
              "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id}
    if c.model_type in ("gpt2", "gptj") and c.rope_scaling != "default":
        raise LmlabError(f"model_type {c.model_type!r} cannot be exported with rope scaling {c.rope_scaling!r} "
                         f"(transformers' {c.model_type} has none)")
    if c.model_type == "gpt2":
        out.update(n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_mlp, n_positions=c.max_seq_len,
                   layer_norm_epsilon=c.norm_eps, activation_function=c.activation,
                   architectures=["GPT2LMHeadModel"])
    elif c.model_type == "gptj":
        out.update(n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_mlp, n_positions=c.max_seq_len,
                   layer_norm_epsilon=c.norm_eps, activation_function=c.activation, rotary_dim=c.rot_dim,
                   architectures=["GPTJForCausalLM"])
    elif c.model_type == "gpt_neox":
        out.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                   intermediate_size=c.d_mlp, max_position_embeddings=c.max_seq_len, layer_norm_eps=c.norm_eps,
                   hidden_act=c.activation, use_parallel_residual=c.parallel_residual, attention_bias=c.qkv_bias,
                   rotary_pct=c.rot_dim / c.head_dim, rotary_emb_base=c.rope_base,
                   **_rope_out(c, c.rot_dim / c.head_dim), architectures=["GPTNeoXForCausalLM"])
    else:
        out.update(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                   num_key_value_heads=c.kv_heads, head_dim=c.head_dim, intermediate_size=c.d_mlp,
                   max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, hidden_act=c.activation,
                   rope_theta=c.rope_base, **_rope_out(c), sliding_window=c.sliding_window,
                   architectures=[{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                   "qwen2": "Qwen2ForCausalLM"}[c.model_type]])
        if c.model_type == "llama":
            out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
        if c.model_type == "qwen2":
            layers = c.sliding_window_layers or (False,) * c.n_layers
            out.update(layer_types=["sliding_attention" if s else "full_attention" for s in layers],
                       use_sliding_window=any(layers))
    out.update(common)
    out["model_type"] = c.model_type
    return out


def with_special_tokens(c: ModelConfig, bos: int | None, eos: int | tuple[int, ...] | None,
                        pad: int | None) -> ModelConfig:
    """``c`` with each of its missing (None) BOS/EOS/PAD ids filled from the given ones; set ids are kept.

    Why: a config.json with ``eos_token_id: null`` beside a tokenizer that has ``<|endoftext|>`` makes
    ``lmlab.generate`` and ``transformers``' ``generate`` run past the end of the text."""
    import dataclasses

    fill = {name: value for name, value in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad))
            if getattr(c, name) is None and value is not None}
    return dataclasses.replace(c, **fill) if fill else c


def generation_config_json(c: ModelConfig) -> dict[str, Any] | None:
    """The ``generation_config.json`` transformers reads for its generate defaults (None without an EOS)."""
    if c.eos_token_id is None:
        return None
    out = {"bos_token_id": c.bos_token_id, "pad_token_id": c.pad_token_id,
           "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id}
    return {k: v for k, v in out.items() if v is not None}
