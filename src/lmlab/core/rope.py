"""Rotary position embeddings in the two layouts the field uses, with the context-extension scalings.

"half" (GPT-NeoX, Llama): the rotated dims are split into two halves, x1 and x2, and rotated as pairs
(x1[i], x2[i]). "interleaved" (GPT-J, the original RoFormer): pairs are adjacent dims (x[2i], x[2i+1]).
Only the first ``rot_dim`` dims of each head are rotated (NeoX rotary_pct, GPT-J rotary_dim).

Scalings (``config.rope_scaling``, parameters in ``config.rope_scaling_params``, named as in HF
``rope_parameters`` so a config.json round-trips and ``transformers`` computes the same logits):

- ``linear``: position interpolation (Chen et al. 2023, arXiv:2306.15595): every frequency divided by ``factor``.
- ``dynamic``: dynamic NTK-aware scaling (bloc97 / emozilla 2023; HF "dynamic"): the base grows with the
  sequence, ``base * (factor * L / L0 - (factor - 1)) ** (d / (d - 2))`` once L exceeds the model's
  ``max_seq_len`` L0, where L = the forward's largest position + 1. Stateless: HF's rotary module remembers the
  largest length it has seen until a sequence shorter than L0 arrives; here each forward uses its own L
  (identical whenever lengths only grow, as in cached decoding).
- ``yarn``: YaRN (Peng et al. 2023, arXiv:2309.00071): NTK-by-parts ramp between interpolated and original
  frequencies (beta_fast=32, beta_slow=1, the paper's Llama values) and the attention temperature
  sqrt(1/t) = 0.1 ln(s) + 1, folded into cos/sin as HF does (it scales q.k by its square).
- ``llama3``: Llama 3.1's wavelength-banded interpolation.
- ``longrope``: free per-dimension factors (LongRoPE, Ding et al. 2024, arXiv:2402.13753; HF "longrope"):
  ``short_factor`` up to ``original_max_position_embeddings``, ``long_factor`` beyond, one factor per rotated
  pair (rot_dim / 2 of them), and attention factor sqrt(1 + ln(s) / ln(L0)) unless ``attention_factor`` is set.
"""

from __future__ import annotations

import math
from typing import Any

import torch


from lmlab.core.config import ModelConfig
from lmlab.core.rope_scaling import ROPE_SCALING_REQUIRED, ROPE_SCALINGS, check_rope_scaling  # noqa: F401 (re-exported)

# types whose frequencies depend on the forward's sequence length
_LENGTH_DEPENDENT = ("dynamic", "longrope")


def _params(config: ModelConfig) -> dict[str, Any]:
    params = dict(config.rope_scaling_params)
    params.setdefault("original_max_position_embeddings", config.max_seq_len)  # as HF's standardize_rope_params
    return params


def _base_inverse_frequencies(config: ModelConfig, base: float | None = None) -> torch.Tensor:
    dim = config.rot_dim
    base = config.rope_base if base is None else base
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(config: ModelConfig, params: dict[str, Any]) -> torch.Tensor:
    dim, base = config.rot_dim, config.rope_base
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or config.max_seq_len / original
    beta_fast = params.get("beta_fast") or 32  # the paper's beta = 32 (HF beta_fast) and alpha = 1 (beta_slow)
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` times in L0
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the ramp needs a non-empty interval
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # [dim/2] 0 -> 1
    keep = 1 - ramp  # 1: high-frequency dims keep their frequency (extrapolate); 0: interpolate
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def inverse_frequencies(config: ModelConfig, seq_len: int | None = None) -> torch.Tensor:
    """[rot_dim // 2] float32 inverse frequencies with the config's scaling applied.

    ``seq_len`` (the largest position + 1 of a forward) matters for ``dynamic`` and ``longrope`` only; None
    means "within the original context".
    """
    kind, params = config.rope_scaling, _params(config)
    if kind == "linear":
        return _base_inverse_frequencies(config) / params["factor"]
    if kind == "dynamic":
        dim, original = config.rot_dim, config.max_seq_len
        length = max(seq_len or original, original)
        factor = params["factor"]
        base = config.rope_base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inverse_frequencies(config, base)
    if kind == "yarn":
        return _yarn(config, params)
    if kind == "llama3":
        return _llama3(_base_inverse_frequencies(config), params)
    if kind == "longrope":
        long = seq_len is not None and seq_len > params["original_max_position_embeddings"]
        factors = torch.tensor(params["long_factor" if long else "short_factor"], dtype=torch.float32)  # [rot_dim/2]
        return _base_inverse_frequencies(config) / factors
    return _base_inverse_frequencies(config)


def attention_scaling(config: ModelConfig) -> float:
    """The factor cos and sin are multiplied by (YaRN's temperature, LongRoPE's attention factor); else 1."""
    kind, params = config.rope_scaling, _params(config)
    if kind not in ("yarn", "longrope"):
        return 1.0
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or config.max_seq_len / original
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    if kind == "longrope":
        return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))

    def mscale(scale: float, m: float = 1.0) -> float:  # YaRN eq. 22: sqrt(1/t) = 0.1 ln(s) + 1
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if params.get("mscale") and params.get("mscale_all_dim"):  # DeepSeek's variant
        return mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
    return mscale(factor)


def rotary_tables(config: ModelConfig, positions: torch.Tensor, dtype: torch.dtype,
                  inv_freq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, T, rot_dim] for integer positions [B, T], laid out for ``config.rope_style``.

    ``inv_freq``: ``inverse_frequencies(config)`` on the positions' device, when the caller keeps it (ignored
    by the length-dependent scalings, which recompute it from this forward's largest position).
    """
    if config.rope_scaling in _LENGTH_DEPENDENT:
        inv_freq = inverse_frequencies(config, int(positions.max()) + 1).to(positions.device)
    elif inv_freq is None:
        inv_freq = inverse_frequencies(config).to(positions.device)
    angles = positions.float()[..., None] * inv_freq  # [B, T, rot_dim/2]
    if config.rope_style == "half":
        angles = torch.cat((angles, angles), dim=-1)
    else:
        angles = torch.repeat_interleave(angles, 2, dim=-1)
    cos, sin = angles.cos(), angles.sin()  # [B, T, rot_dim]
    scale = attention_scaling(config)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def _rotate(x: torch.Tensor, style: str) -> torch.Tensor:
    if style == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    """Rotate the first rot_dim dims of x [B, T, H, d_head] by cos/sin [B, T, rot_dim]."""
    rot_dim = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if rot_dim == x.shape[-1]:
        return x * cos + _rotate(x, style) * sin
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    return torch.cat((x_rot * cos + _rotate(x_rot, style) * sin, x_pass), dim=-1)


def prepare_rotary(cos: torch.Tensor, sin: torch.Tensor, style: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Tables from ``rotary_tables`` arranged once per forward for ``apply_rotary_prepared`` in every layer.

    Adds the heads axis ([B, T, 1, rot_dim]) and, for the "half" style, folds rotate-half's sign into sin
    (-x2 * s == x2 * -s exactly), so each layer's rotation is a roll and three elementwise ops.
    """
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if style == "half":
        s1, s2 = sin.chunk(2, dim=-1)
        sin = torch.cat((-s1, s2), dim=-1)
    return cos, sin, style


def apply_rotary_prepared(x: torch.Tensor, prepared: tuple[torch.Tensor, torch.Tensor, str]) -> torch.Tensor:
    """``apply_rotary`` with tables from ``prepare_rotary``; bit-identical results."""
    cos, sin, style = prepared
    rot_dim = cos.shape[-1]
    if style == "half" and rot_dim == x.shape[-1]:
        return x * cos + x.roll(rot_dim // 2, dims=-1) * sin
    if style == "half":
        x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
        return torch.cat((x_rot * cos + x_rot.roll(rot_dim // 2, dims=-1) * sin, x_pass), dim=-1)
    if rot_dim == x.shape[-1]:
        return x * cos + _rotate(x, style) * sin
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    return torch.cat((x_rot * cos + _rotate(x_rot, style) * sin, x_pass), dim=-1)
