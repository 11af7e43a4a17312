"""RoPE scaling types and the check of their parameters: what ``ModelConfig`` validates at construction.

Its own module so that the config (which validates) and ``rope.py`` (which computes frequencies from a config)
do not import each other.
"""

from __future__ import annotations

from typing import Any

from lmlab.errors import LmlabError

# scaling type -> parameters it requires (HF names); the rest are optional.
ROPE_SCALING_REQUIRED: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": (),  # factor defaults to max_seq_len / original_max_position_embeddings, as in HF
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor"),
}
ROPE_SCALINGS = tuple(ROPE_SCALING_REQUIRED)


def check_rope_scaling(kind: str, params: dict[str, Any], rot_dim: int, rotary: bool, max_seq_len: int) -> None:
    """Raise LmlabError (one line naming the field) if a scaling and its parameters cannot be used."""
    if kind not in ROPE_SCALING_REQUIRED:
        raise LmlabError(f"rope scaling {kind!r} is not one of {ROPE_SCALINGS}")
    if kind == "default":
        return
    if not rotary:
        raise LmlabError(f"rope scaling {kind!r} needs rotary positions; this model has learned position embeddings")
    for name in ROPE_SCALING_REQUIRED[kind]:
        if name not in params:
            raise LmlabError(f"rope scaling {kind!r} needs parameter {name!r}")
    for name in ("factor", "original_max_position_embeddings", "attention_factor", "low_freq_factor",
                 "high_freq_factor"):
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise LmlabError(f"rope scaling {kind!r}: {name} must be a positive number, got {value!r}")
    if kind == "llama3" and not params["high_freq_factor"] > params["low_freq_factor"]:
        raise LmlabError("rope scaling 'llama3': high_freq_factor must exceed low_freq_factor")
    if kind == "longrope":
        for name in ("short_factor", "long_factor"):
            value = params[name]
            if not isinstance(value, (tuple, list)) or len(value) != rot_dim // 2:
                got = len(value) if isinstance(value, (tuple, list)) else repr(value)
                raise LmlabError(f"rope scaling 'longrope': {name} must list rot_dim / 2 = {rot_dim // 2} factors "
                                 f"(one per rotated pair), got {got}")
            if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in value):
                raise LmlabError(f"rope scaling 'longrope': {name} must hold positive numbers")
