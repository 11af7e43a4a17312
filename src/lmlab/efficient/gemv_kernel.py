"""lmlab's own batch-1 weight-only int8 / int4 GEMV kernel (AVX2 + FMA), compiled on first use.

Why: decode at batch 1 streams every weight once per token, so a layer is only as fast as its kernel reads
bytes. PyTorch's ``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu`` are compute-bound at M = 1 on a
CPU without AVX-512 VNNI (session 5: int8 decode at 25% and int4 at 21% of the bandwidth bound, fp32 at 61%).
``gemv_kernel.cpp`` does only what streaming needs (extend bytes -> fp32 -> FMA, the int4 group scale once
per group on the partial sum), reads ``QuantizedLinear``'s buffers in place (no repacked copy) and splits
rows across torch's threads. ``QuantizedLinear`` sends M <= ``MAX_ROWS`` rows here and larger M (prefill)
to PyTorch's kernels.

``int8_gemv_a8`` / ``int4_gemv_a8`` are the same products with the activations first quantized to int8 per 32
columns (llama.cpp's Q8_0, ``quant.q8_0_activations``) and integer dot products (AVX2 maddubs/madd, no VNNI
needed): faster, and within ``sum_k |w_k| max|x_block(k)| / 254`` of the fp32-activation result.
``quant.gemv_activations()`` picks between them (``LMLAB_GEMV_ACT``).

Build: on first use, once per machine, by ``lmlab.core.jit_extension`` (cached; ``make install`` builds it
ahead). ``LMLAB_GEMV=0`` switches the kernel off. Without AVX2/FMA or a C++ compiler, or when the build fails,
one warning line is printed and the PyTorch kernels are used.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from lmlab.core.jit_extension import JitExtension

SOURCE = Path(__file__).with_name("gemv_kernel.cpp")
MAX_ROWS = 4  # the kernel's limit; the dispatch crossover (quant.GEMV_MAX_ROWS) is chosen by measurement
INT4_GROUP_MULTIPLE = 32  # int4 group sizes the kernel reads: multiples of 32 columns
ENV_DISABLE = "LMLAB_GEMV"

EXTENSION = JitExtension("lmlab_gemv", SOURCE, ["int8_gemv", "int4_gemv", "int8_gemv_a8", "int4_gemv_a8"],
                         what="lmlab's int8/int4 GEMV kernel", fallback="PyTorch's kernels", env_disable=ENV_DISABLE)


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here, or None if it can be tried."""
    return EXTENSION.unavailable_reason()


def kernel() -> ModuleType | None:
    """The compiled extension (built on the first call, then cached), or None where it cannot run."""
    return EXTENSION.module()


def available() -> bool:
    return kernel() is not None


def int8_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ (qweight int8 [N, K] * scales [N, 1])^T + bias; x float32 contiguous, M <= 4."""
    return kernel().int8_gemv(x, qweight, scales, bias)  # type: ignore[union-attr]


def int4_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
              group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ ((q - qzeros) * scales)^T + bias for ``pack_int4`` codes qweight uint8
    [N, ceil(K/2)], scales float32 / qzeros uint8 [N, G]; group_size a multiple of 32; M <= 4."""
    return kernel().int4_gemv(x, qweight, scales, qzeros, group_size, bias)  # type: ignore[union-attr]


def int8_gemv_a8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """``int8_gemv`` with x quantized to int8 per 32 columns first (Q8_0, ``quant.q8_0_activations``) and
    integer dot products: y [M, N] = q8_0(x) @ (qweight * scales)^T + bias."""
    return kernel().int8_gemv_a8(x, qweight, scales, bias)  # type: ignore[union-attr]


def int4_gemv_a8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                 group_size: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``int4_gemv`` with x quantized to int8 per 32 columns first (Q8_0) and integer dot products:
    y [M, N] = q8_0(x) @ ((q - qzeros) * scales)^T + bias."""
    return kernel().int4_gemv_a8(x, qweight, scales, qzeros, group_size, bias)  # type: ignore[union-attr]
