"""Which CPU kernel should an inference-time linear layer use? ``F.linear`` (MKL sgemm for fp32) vs oneDNN.

Why this exists: decode is a stream of matrix-vector products, bound by how fast the weights come from memory.
This script measures, for GPT-2-small-shaped layers (768 -> 768/2304/3072, 3072 -> 768, and the 50257-row
output head), the time of one linear at several batch sizes M with both kernels, and the weight-streaming rate
of a whole 12-layer stack plus head -- the number the decode bound really depends on, next to a plain
``tensor.sum()`` read of the same bytes (the ideal). ``lmlab.core.linear`` picks oneDNN for fp32 inference
from what this shows.

    python benchmarks/linear_kernels.py
    python benchmarks/linear_kernels.py --threads 1 --dtypes fp32,bf16
    python benchmarks/linear_kernels.py --quant --threads 1     # weight-only int8/int4 kernels at batch 1

``--quant`` answers the same question for ``lmlab.efficient``'s ``QuantizedLinear`` at decode sizes
(``--rows``, default M = 1), per GPT-2 shape (768x2304, 768x3072, 3072x768, 768x50257): ms per call, weight
GB/s and % of PERF_NOTES.md's 17.8 GB/s for fp32 ``F.linear``, PyTorch's packed weight-only kernels
(``torch._weight_int8pack_mm``, ``torch._weight_int4pack_mm_for_cpu``, bf16 activations) and lmlab's own
GEMV kernel (``lmlab.efficient.gemv_kernel``) with fp32 activations and with int8 ones (``a8``: llama.cpp's
Q8_0, integer dot products; ``LMLAB_GEMV_ACT=int8``). Each kernel cycles through copies of the
layer (>= 64 MB) so its weights come from memory, as at decode. ``--rows 1,2,3,4`` shows the crossover
that ``quant.GEMV_MAX_ROWS`` encodes; more than 4 rows (e.g. ``--rows 64``) time the int4 kernels over blocks of 4
rows, the int4 prefill route of ``quant.GEMV_PREFILL_MAX_ROWS``. Quick relative checks only; final figures on a quiet machine:

    python benchmarks/linear_kernels.py --quant --rows 1,2,4          # 2 threads, quiet machine
    python benchmarks/linear_kernels.py --quant --threads 1           # per-core rates, fine on a busy one
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from lmlab.core.linear import _onednn_linear

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (50257, 768)]  # (out, in)


def ms_per_call(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def stack_rates(dtype: torch.dtype, m: int, reps: int) -> dict[str, float]:
    """GB/s at which each kernel streams a 12-layer GPT-2-small stack plus the output head at batch ``m``."""
    layer = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
    weights = [torch.randn(o, i).to(dtype) for _ in range(12) for o, i in layer] + [torch.randn(50257, 768).to(dtype)]
    xs = {i: torch.randn(m, i).to(dtype) for i in (768, 3072)}
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    flat = torch.cat([w.flatten() for w in weights])
    out = {"sum (read only)": nbytes / ms_per_call(flat.sum, reps) / 1e6}
    out["F.linear"] = nbytes / ms_per_call(lambda: [F.linear(xs[w.shape[1]], w) for w in weights], reps) / 1e6
    out["oneDNN"] = nbytes / ms_per_call(lambda: [_onednn_linear(xs[w.shape[1]], w, None) for w in weights], reps) / 1e6
    return out


GEMV_SHAPES = [(2304, 768), (3072, 768), (768, 3072), (50257, 768)]  # (out, in): GPT-2's qkv, fc, proj, head
PERF_NOTES_GBPS = 17.8  # ../shared/PERF_NOTES.md: this machine's read bandwidth, quiet
STREAM_BYTES = 64e6  # each format cycles through copies of a layer until it reads this many bytes: past the L3


def _quant_calls(o: int, i: int, m: int) -> dict:
    """label -> (list of callables, one per copy of the layer, weight bytes per call) at M = m rows."""
    import copy

    from torch import nn

    from lmlab.efficient import gemv_kernel, quant
    from lmlab.efficient.quant import QuantizedLinear

    lin = nn.Linear(i, o, bias=False)
    x = torch.randn(m, i)
    x16 = x.to(torch.bfloat16)

    def copies(nbytes: int) -> int:
        return max(1, -(-int(STREAM_BYTES) // nbytes))

    w32 = [lin.weight.detach().clone() for _ in range(copies(4 * o * i))]
    q8 = QuantizedLinear.from_linear(lin, 8, None)
    q4 = QuantizedLinear.from_linear(lin, 4, 128)
    q8s = [copy.deepcopy(q8) for _ in range(copies(o * i))]
    q4s = [copy.deepcopy(q4) for _ in range(copies(o * i // 2))]

    def torch_kernel(q):  # PyTorch's packed kernel (the path for M > GEMV_MAX_ROWS)
        def call():
            quant.USE_GEMV = False
            try:
                return q(x)
            finally:
                quant.USE_GEMV = True
        return call

    calls = {
        "fp32 F.linear": ([lambda w=w: F.linear(x, w) for w in w32], 4 * o * i),
        "torch int8pack (bf16 act.)": ([torch_kernel(q) for q in q8s], o * i),
        "torch int4pack g128 (bf16 act.)": ([torch_kernel(q) for q in q4s], o * i // 2),
    }
    if gemv_kernel.available() and m > gemv_kernel.MAX_ROWS:  # prefill sizes: the kernel over 4-row blocks
        def blocks(fn, q):
            return lambda: torch.cat([fn(x[r:r + 4], q.qweight, q.scales, q.qzeros, 128, None) for r in range(0, m, 4)])
        calls["lmlab gemv int4 g128"] = ([blocks(gemv_kernel.int4_gemv, q) for q in q4s], o * i // 2)
        calls["lmlab gemv int4 g128 a8"] = ([blocks(gemv_kernel.int4_gemv_a8, q) for q in q4s], o * i // 2)
    if gemv_kernel.available() and m <= gemv_kernel.MAX_ROWS:
        calls["lmlab gemv int8"] = ([lambda q=q: gemv_kernel.int8_gemv(x, q.qweight, q.scales, None) for q in q8s],
                                    o * i)
        calls["lmlab gemv int4 g128"] = ([lambda q=q: gemv_kernel.int4_gemv(x, q.qweight, q.scales, q.qzeros, 128,
                                                                            None) for q in q4s], o * i // 2)
        calls["lmlab gemv int8 a8"] = ([lambda q=q: gemv_kernel.int8_gemv_a8(x, q.qweight, q.scales, None)
                                        for q in q8s], o * i)
        calls["lmlab gemv int4 g128 a8"] = ([lambda q=q: gemv_kernel.int4_gemv_a8(x, q.qweight, q.scales, q.qzeros,
                                                                                  128, None) for q in q4s], o * i // 2)
    del x16
    return calls


def _stream_ms(fns: list, reps: int) -> float:
    """Best-of-reps ms per call while cycling through the copies (so the weights come from memory)."""
    for fn in fns[:2]:
        fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for fn in fns:
            fn()
        best = min(best, (time.perf_counter() - t) / len(fns))
    return best * 1e3


def quant_kernels(reps: int, rows: list[int]) -> None:
    """ms per call and weight GB/s of each weight-only kernel at M rows for the GPT-2 shapes, from memory."""
    print(f"\n## weight-only kernels from memory (each cycles through >= {STREAM_BYTES / 1e6:.0f} MB of copies): "
          f"ms per call (GB/s of weight bytes, % of {PERF_NOTES_GBPS} GB/s)")
    cols = ["fp32 F.linear", "torch int8pack (bf16 act.)", "torch int4pack g128 (bf16 act.)", "lmlab gemv int8",
            "lmlab gemv int4 g128", "lmlab gemv int8 a8", "lmlab gemv int4 g128 a8"]
    print("| out x in | M | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
    with torch.inference_mode():
        for m in rows:
            for o, i in GEMV_SHAPES:
                calls = _quant_calls(o, i, m)
                cells = []
                for label in cols:
                    if label not in calls:
                        cells.append("-")
                        continue
                    fns, nbytes = calls[label]
                    ms = _stream_ms(fns, reps)
                    gbps = nbytes / ms / 1e6
                    cells.append(f"{ms:.3f} ({gbps:.1f}, {100 * gbps / PERF_NOTES_GBPS:.0f}%)")
                print(f"| {o} x {i} | {m} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's = cores)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,4,8,32,128,2048", help="M values for the per-shape table")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quant", action="store_true", help="only the weight-only int8/int4 kernel table")
    ap.add_argument("--rows", default="1", help="--quant: M values (lmlab's GEMV kernel runs M <= 4)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quant:
        quant_kernels(args.reps, [int(r) for r in args.rows.split(",")])
        return
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        print(f"\n## {name}: ms per call (F.linear / oneDNN = speed-up)")
        print("| out x in | M | F.linear ms | oneDNN ms | speed-up |\n|---|---|---|---|---|")
        for o, i in SHAPES:
            w = torch.randn(o, i).to(dtype)
            for m in map(int, args.batches.split(",")):
                if o * m > 50257 * 128:
                    continue  # the head at prefill sizes takes long and says nothing new
                x = torch.randn(m, i).to(dtype)
                a = ms_per_call(lambda: F.linear(x, w), args.reps)
                b = ms_per_call(lambda: _onednn_linear(x, w, None), args.reps)
                print(f"| {o} x {i} | {m} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
        for m in (1, 8):
            rates = stack_rates(dtype, m, max(3, args.reps // 2))
            print(f"weight streaming, 12 layers + head, M={m}: "
                  + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items()))


if __name__ == "__main__":
    main()
