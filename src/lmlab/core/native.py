"""lmlab's fp32 decode kernels (``native_kernels.cpp``, AVX2 + FMA): GEMV for 1-4 rows, one-query attention, norms
and MLP activations.

Why: a decode step of a small model is made of fixed costs more than of bytes. On the machine of BENCHMARKS.md,
per call, weights and caches streamed from memory (``benchmarks/native_kernels.py``, session 10):

- a 768 x 256 fp32 projection: oneDNN ~126 us (6.3 GB/s), this GEMV ~54 us (14.6 GB/s); 1.1-2.3x on every
  decode shape measured (GPT-2, SmolLM2, mha-9m);
- one query over the cache: 1.2-2.1x PyTorch's CPU flash attention (GPT-2, 128 keys: ~82 -> ~55 us; SmolLM2,
  4K: ~827 -> ~393 us);
- RMSNorm of one row: ~17 -> ~3 us; LayerNorm ~9 -> ~2 us; GPT-2's tanh GELU over 3,072 values ~14 -> ~2 us
  (each PyTorch op costs ~2.5-3 us of dispatch here before any arithmetic, and its CPU tanh is scalar).

Where they run (the callers decide, everything else is PyTorch's own op, so training numerics never change):

- ``lmlab.core.linear.fast_linear``: fp32 inference calls with at most ``MAX_ROWS`` rows (decode), a
  contiguous weight and bias; larger M (prefill) stays on oneDNN;
- the model's decode attention: one new token per row, no mask needed (every cached slot visible), fp32, no
  hook on the attention pattern; a cache policy that reads attention scores (H2O, Keyformer) gets the
  kernel's softmax. Otherwise SDPA, or the eager path;
- ``RMSNorm`` of decode rows (at most ``MAX_ROWS``): one call for PyTorch's CPU composite of ~15 ops
  (~17 us a call); the model's ``LayerNorm``, tanh GELU and a gated MLP's ``silu(gate) * up`` likewise;
- Keyformer's per-step noise (``hash_uniform``): one call for ~20 int64 tensor ops, the same bits; and the
  score update of H2O and Keyformer after a forward (``accumulate_scores``: the noise, log, softmax and sums over
  every layer in one pass instead of ~20 ops over [L, B, H, T, S] temporaries);
- a whole Llama- or GPT-2-family block at decode (``decode_layer``: the kernels above chained in C++, one call
  instead of ~30 ops), with fp32 projections or int4 ones on lmlab.efficient's GEMV (compiled into this module
  with ``gemv_kernel.cpp``), when ``lmlab.core.model.Block._native_decode`` finds nothing that needs the
  layer-by-layer path.

Results differ from PyTorch's only in summation order (~1e-6 relative). The GEMV computes each output row
with the same arithmetic for any M <= 4, so a row's logits do not depend on what else is in its batch.
``LMLAB_NATIVE=0`` (or ``ENABLED = False``) switches them all off. Built like the int8/int4 kernel
(``lmlab.core.jit_extension``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from lmlab.core.jit_extension import JitExtension

MAX_ROWS = 4  # the GEMV's limit (activation rows per call)
NO_TENSOR = torch.empty(0)  # an absent bias or norm weight in decode_layer's tensor lists
ENABLED = True  # module-level switch (tests and benchmarks compare both paths)
# decode_layer calls the int8/int4 GEMV of lmlab.efficient (a C++ source, no Python import): one unit
GEMV_SOURCE = Path(__file__).parents[1] / "efficient" / "gemv_kernel.cpp"
EXTENSION = JitExtension("lmlab_native", (GEMV_SOURCE, Path(__file__).with_name("native_kernels.cpp")),
                         ["f32_gemv", "decode_attention", "rms_norm", "layer_norm", "gelu_tanh", "silu_mul",
                          "hash_uniform", "decode_layer", "accumulate_scores"], what="lmlab's fp32 decode kernels",
                         fallback="PyTorch's ops", env_disable="LMLAB_NATIVE")


def kernels() -> ModuleType | None:
    """The compiled kernels, or None when switched off or unavailable here."""
    return EXTENSION.module() if ENABLED else None


def f32_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``F.linear(x, weight, bias)`` for x [..., K] of at most ``MAX_ROWS`` rows, or None when the kernel does
    not apply (the caller falls back). The caller has checked: fp32 CPU tensors, no autograd needed."""
    K = x.shape[-1]
    if x.numel() > MAX_ROWS * K or not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        return None
    mod = kernels()
    if mod is None:
        return None
    rows = x.reshape(-1, K)
    y = mod.f32_gemv(rows if rows.is_contiguous() else rows.contiguous(), weight, bias)  # [M, N]
    return y.view(*x.shape[:-1], weight.shape[0])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, with_probs: bool = False):
    """softmax(q k^T / sqrt(D)) v for q [B, H, 1, D] over keys / values [B, Hkv, S, D] (all visible; head h
    reads KV head h // (H / Hkv)), i.e. SDPA with ``enable_gqa`` and no mask; [B, H, 1, D], or with
    ``with_probs`` the pair (output, softmax [B, H, 1, S]). None when the kernel does not apply (not fp32 CPU,
    D not a multiple of 8, a strided last dimension, autograd needed)."""
    if not (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and q.dtype == torch.float32 and k.dtype == torch.float32 and v.dtype == torch.float32
            and q.is_cpu and k.is_cpu and v.is_cpu and q.shape[-1] % 8 == 0 and k.stride(-1) == 1
            and v.stride(-1) == 1 and q.shape[1] % k.shape[1] == 0
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        return None
    mod = kernels()
    if mod is None:
        return None
    out = mod.decode_attention(q if q.is_contiguous() else q.contiguous(), k, v, q.shape[-1] ** -0.5, with_probs)
    return (out[0], out[1]) if with_probs else out[0]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """``F.rms_norm(x, (D,), weight, eps)`` for at most ``MAX_ROWS`` rows (decode) of fp32 CPU tensors when
    autograd does not need the op, else None. Prefill and scoring keep PyTorch's op, so their numerics (and
    anything computed from them, e.g. an edit's covariance statistics) are PyTorch's."""
    if not (type(x) is torch.Tensor and x.numel() <= MAX_ROWS * x.shape[-1] and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.is_cpu
            and weight.is_cpu and x.is_contiguous() and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    mod = kernels()
    return None if mod is None else mod.rms_norm(x, weight, eps)


def _decode_rows(x: torch.Tensor) -> bool:
    """x is a plain contiguous fp32 CPU tensor of at most MAX_ROWS rows that autograd does not need."""
    return (type(x) is torch.Tensor and x.dtype == torch.float32 and x.dim() >= 1
            and x.numel() <= MAX_ROWS * x.shape[-1] and x.is_cpu and x.is_contiguous()
            and not (x.requires_grad and torch.is_grad_enabled()))


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor | None:
    """``F.layer_norm(x, (D,), weight, bias, eps)`` for decode rows (at most ``MAX_ROWS``, fp32 CPU, no autograd
    needed), else None: prefill and training keep PyTorch's op (see ``rms_norm``)."""
    if not (_decode_rows(x) and all(t is None or (t.dtype == torch.float32 and t.is_cpu and t.is_contiguous()
                                                  and not (t.requires_grad and torch.is_grad_enabled()))
                                    for t in (weight, bias))):
        return None
    mod = kernels()
    return None if mod is None else mod.layer_norm(x, weight, bias, eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor | None:
    """``F.gelu(x, approximate="tanh")`` for decode rows, else None (relative difference < 1e-6)."""
    if not _decode_rows(x):
        return None
    mod = kernels()
    return None if mod is None else mod.gelu_tanh(x)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    """``F.silu(gate) * up`` for decode rows of one shape, else None."""
    if not (_decode_rows(gate) and _decode_rows(up) and gate.shape == up.shape):
        return None
    mod = kernels()
    return None if mod is None else mod.silu_mul(gate, up)


def accumulate_scores(score: torch.Tensor, layer_probs: list[torch.Tensor], first: int, real: torch.Tensor,
                      keyformer: bool, seed: int, tau: torch.Tensor, query_index: torch.Tensor,
                      key_pos: torch.Tensor) -> bool:
    """``score`` [L, B, n_kv, capacity] += what the attention probabilities of the layers ``first``, ``first + 1``,
    ... (``layer_probs``, one [B, H, T, S] each, fp32 contiguous) add to each slot: H2O's probabilities, or with
    ``keyformer`` its Gumbel softmax (see the C++ source); ``real`` [B, T] uint8 or ``NO_TENSOR``. False when the
    kernels are unavailable (the caller computes it with tensor ops)."""
    mod = kernels()
    if mod is None:
        return False
    mod.accumulate_scores(score, layer_probs, first, real, keyformer, seed, tau, query_index, key_pos)
    return True


def hash_uniform(seed: int, layers: torch.Tensor, query_index: torch.Tensor, key_pos: torch.Tensor,
                 group: int) -> torch.Tensor | None:
    """Keyformer's counter-based uniform noise [L', B, n_kv * group, T, S] on CPU, bit for bit the tensor
    computation of ``lmlab.efficient.kv_policies.layers_gumbel_noise`` (see there), or None where the kernels
    do not run (the caller computes it with tensor ops)."""
    if not (layers.is_cpu and query_index.is_cpu and key_pos.is_cpu):
        return None
    mod = kernels()
    return None if mod is None else mod.hash_uniform(seed, layers, query_index, key_pos, group)
