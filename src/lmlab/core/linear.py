"""``Linear``: an ``nn.Linear`` whose inference path on CPU in fp32 runs oneDNN instead of the BLAS default.

Why: PyTorch's CPU build sends fp32 ``F.linear`` to MKL's sgemm. Decoding is matrix-vector work, bound by how
fast the weights stream from memory, and on the AMD EPYC hosts we measured, MKL's small-M sgemm streams them at
~10 GB/s while oneDNN's matmul (which PyTorch already uses for bf16) streams at ~20 GB/s: 1.6-3x faster for
batch 1-8 decode shapes, and 1.1-1.4x for prefill shapes (``benchmarks/linear_kernels.py``). Results differ from
``F.linear`` only in summation order (relative error ~1e-6).

The fast path is taken only when autograd does not need this op (``torch.no_grad``/``inference_mode``, or
nothing here requires grad), on CPU, with fp32 input and weight, outside autocast and ``torch.compile``. Any
other call -- and every call if the private oneDNN op is missing or fails its one-time self-check -- is plain
``F.linear``, so training numerics are PyTorch's own. ``FAST_INFERENCE = False`` switches the fast path off.

It stays an ``nn.Linear`` (same parameters, state-dict names, ``isinstance``), so hooks, LoRA and checkpoint
code see no difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FAST_INFERENCE = True  # module-level switch (tests and benchmarks compare both paths)
_onednn_ok: bool | None = None  # None: not probed yet
_PLAIN = (torch.Tensor, nn.Parameter)  # not DTensor/FSDP shards, fake or meta subclasses


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _probe() -> bool:
    """Whether the private oneDNN linear op exists here and agrees with F.linear on a small problem."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=g) for s in ((3, 5, 16), (24, 16), (24,)))
        return bool(torch.allclose(_onednn_linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except Exception:  # noqa: BLE001 -- any failure means: use F.linear
        return False


def fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN when that is safe and faster (see the module docstring)."""
    global _onednn_ok
    if (FAST_INFERENCE and type(x) is torch.Tensor and type(weight) in _PLAIN and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.is_cpu
            and weight.is_cpu and x.numel() > 0
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        if _onednn_ok is None:
            _onednn_ok = _probe()
        if _onednn_ok:
            return _onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` with :func:`fast_linear` as its forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_linear(x, self.weight, self.bias)
