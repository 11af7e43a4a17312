"""Which CPU kernel should an inference-time linear layer use? ``F.linear`` (MKL sgemm for fp32) vs oneDNN.

Why this exists: decode is a stream of matrix-vector products, bound by how fast the weights come from memory.
This script measures, for GPT-2-small-shaped layers (768 -> 768/2304/3072, 3072 -> 768, and the 50257-row
output head), the time of one linear at several batch sizes M with both kernels, and the weight-streaming rate
of a whole 12-layer stack plus head -- the number the decode bound really depends on, next to a plain
``tensor.sum()`` read of the same bytes (the ideal). ``lmlab.core.linear`` picks oneDNN for fp32 inference
from what this shows.

    python benchmarks/linear_kernels.py
    python benchmarks/linear_kernels.py --threads 1 --dtypes fp32,bf16
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's = cores)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,4,8,32,128,2048", help="M values for the per-shape table")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
