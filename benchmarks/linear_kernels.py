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

``--quant`` answers the same question for ``lmlab.efficient``'s ``QuantizedLinear``: per GPT-2 shape at
M = 1 (decode), ms per call of fp32 / bf16 ``F.linear``, ``torch._weight_int8pack_mm`` (bf16 and fp32
activations), ``torch._weight_int4pack_mm_for_cpu`` (bf16; the 50257-row head padded to a multiple of 16),
dequantise-then-matmul (the fallback), and torchao's weight-only configs where they run on this CPU; each
with the GB/s of weight bytes it streams. Quick relative checks only; final figures on a quiet machine.
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


def quant_kernels(reps: int) -> None:
    """ms per call and weight GB/s of each weight-only kernel at M = 1 for the GPT-2 shapes."""
    from torch import nn

    from lmlab.efficient.quant import QuantizedLinear

    print("\n## weight-only kernels, M = 1: ms per call (GB/s of weight bytes streamed)")
    cols = ["fp32 F.linear", "bf16 F.linear", "int8pack bf16", "int8pack fp32", "int4pack bf16 g128",
            "int4 dequant+mm", "torchao int8", "torchao int4 g128"]
    print("| out x in | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for o, i in SHAPES:
        lin = nn.Linear(i, o, bias=False)
        x = torch.randn(1, i)
        q8 = QuantizedLinear.from_linear(lin, 8, None)
        q8f = QuantizedLinear.from_linear(lin, 8, None, activation_dtype=torch.float32)
        q4 = QuantizedLinear.from_linear(lin, 4, 128)
        w16 = lin.weight.detach().to(torch.bfloat16)
        x16 = x.to(torch.bfloat16)
        calls = {
            "fp32 F.linear": (lambda: F.linear(x, lin.weight), 4 * o * i),
            "bf16 F.linear": (lambda: F.linear(x16, w16), 2 * o * i),
            "int8pack bf16": (lambda: q8(x), o * i),
            "int8pack fp32": (lambda: q8f(x), o * i),
            "int4pack bf16 g128": (lambda: q4(x), o * i // 2),
            "int4 dequant+mm": (lambda: F.linear(x, q4.dequantize()), o * i // 2),
        }
        for label, cfg_name, kwargs in (("torchao int8", "Int8WeightOnlyConfig", {}),
                                        ("torchao int4 g128", "Int4WeightOnlyConfig", {"group_size": 128})):
            try:
                import torchao.quantization as tq

                m = nn.Sequential(nn.Linear(i, o, bias=False)).to(torch.bfloat16)
                m[0].weight.data.copy_(w16)
                tq.quantize_(m, getattr(tq, cfg_name)(**kwargs))
                m(x16)
                calls[label] = (lambda m=m: m(x16), o * i // (1 if "int8" in label else 2))
            except Exception as err:  # noqa: BLE001 -- not installed / not on this CPU: say so
                calls[label] = (None, f"{type(err).__name__}")
        cells = []
        with torch.inference_mode():
            for label in cols:
                fn, nbytes = calls[label]
                if fn is None:
                    cells.append(f"n/a ({nbytes})")
                    continue
                ms = ms_per_call(fn, reps)
                cells.append(f"{ms:.3f} ({nbytes / ms / 1e6:.1f})")
        print(f"| {o} x {i} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's = cores)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,4,8,32,128,2048", help="M values for the per-shape table")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quant", action="store_true", help="only the weight-only int8/int4 kernel table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quant:
        quant_kernels(args.reps)
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
