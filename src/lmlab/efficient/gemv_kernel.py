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

Build: ``torch.utils.cpp_extension.load_inline`` with ``-O3 -mavx2 -mfma -fopenmp``, once per machine (the
build is cached; the first build takes ~1 min on 2 busy cores). The directory is ``$LMLAB_KERNEL_DIR`` when
set, else torch's default (``$TORCH_EXTENSIONS_DIR`` or ~/.cache/torch_extensions). ``LMLAB_GEMV=0``
switches the kernel off. Without AVX2/FMA or a C++ compiler, or when the build fails, one warning line is
printed and the PyTorch kernels are used.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("gemv_kernel.cpp")
MAX_ROWS = 4  # the kernel's limit; the dispatch crossover (quant.GEMV_MAX_ROWS) is chosen by measurement
INT4_GROUP_MULTIPLE = 32  # int4 group sizes the kernel reads: multiples of 32 columns
ENV_DISABLE = "LMLAB_GEMV"
ENV_BUILD_DIR = "LMLAB_KERNEL_DIR"

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module": the loaded extension or None once tried


def _cpu_has_avx2_fma() -> bool:
    """AVX2 and FMA on an x86-64 CPU (from /proc/cpuinfo on Linux, torch's dispatch level elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        return {"avx2", "fma"} <= set(flags.split())
    except (OSError, StopIteration):
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here, or None if it can be tried."""
    if os.environ.get(ENV_DISABLE, "1") == "0":
        return f"{ENV_DISABLE}=0"
    if not _cpu_has_avx2_fma():
        return "the CPU lacks AVX2/FMA"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler on PATH"
    return None


def _warn(what: str) -> None:
    print(f"warning: lmlab's int8/int4 GEMV kernel {what}; using PyTorch's kernels", file=sys.stderr, flush=True)


def _built_before(build_dir: str | None) -> bool:
    """Whether a compiled copy is likely cached (torch rebuilds anyway when the source changed)."""
    from torch.utils.cpp_extension import _get_build_directory

    try:
        where = Path(build_dir or _get_build_directory("lmlab_gemv", verbose=False))
    except Exception:  # noqa: BLE001 -- a private helper; a wrong guess only changes a note
        return False
    return any(where.glob("lmlab_gemv*.so"))


def _build() -> ModuleType | None:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get(ENV_DISABLE, "1") != "0":
            _warn(f"not used ({reason})")
        return None
    from torch.utils.cpp_extension import load_inline

    build_dir = os.environ.get(ENV_BUILD_DIR)
    if build_dir:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
    if not _built_before(build_dir):
        print("note: compiling lmlab's int8/int4 GEMV kernel (once per machine, ~1-2 min)", file=sys.stderr, flush=True)
    try:
        return load_inline(name="lmlab_gemv", cpp_sources=[SOURCE.read_text()],
                           functions=["int8_gemv", "int4_gemv", "int8_gemv_a8", "int4_gemv_a8"],
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"],
                           build_directory=build_dir or None, verbose=False)
    except Exception as err:  # noqa: BLE001 -- any build failure: fall back, say why on one line
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        _warn(f"failed to build ({first[:160]})")
        return None


def kernel() -> ModuleType | None:
    """The compiled extension (built on the first call, then cached), or None where it cannot run."""
    if "module" not in _state:
        with _lock:
            if "module" not in _state:
                _state["module"] = _build()
    return _state["module"]  # type: ignore[return-value]


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
