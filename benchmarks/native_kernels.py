"""lmlab's fp32 decode kernels (``lmlab.core.native``) against the PyTorch ops they replace, call by call, one run.

- GEMV at M = 1 on decode shapes (mha-9m, GPT-2-124M, SmolLM2-135M projections and heads) against oneDNN's
  linear (what ``fast_linear`` used before) and ``F.linear`` (MKL). Each side cycles through enough copies of
  the weight to read it from memory, as a decode step does; GB/s = weight bytes / time.
- one-query attention over a cache view (keys and values narrowed from a larger allocation, as decoding
  reads them) against ``F.scaled_dot_product_attention`` (PyTorch's CPU flash kernel), at several lengths.
- RMSNorm and LayerNorm of one row against ``F.rms_norm`` / ``F.layer_norm``; GPT-2's tanh GELU and a gated
  MLP's ``silu(gate) * up`` over one row against ``F.gelu`` / ``F.silu(gate) * up``.

Each cell is the median of ``--reps`` timings of ``--calls`` calls; sides alternate rep by rep. Needs a quiet
machine (``--wait-quiet``):

    python benchmarks/native_kernels.py --wait-quiet 60
    python benchmarks/native_kernels.py --quick        # a smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import machine_info, wait_for_quiet  # noqa: E402

GEMV_SHAPES = [  # (out, in, what)
    (768, 256, "mha-9m q/k/v"), (1536, 256, "mha-9m gate/up"), (256, 768, "mha-9m down"), (8192, 256, "mha-9m head"),
    (2304, 768, "GPT-2 qkv"), (768, 768, "GPT-2 out"), (3072, 768, "GPT-2 fc"), (768, 3072, "GPT-2 proj"),
    (960, 576, "SmolLM2 q/k/v"), (3072, 576, "SmolLM2 gate/up"), (576, 1536, "SmolLM2 down"),
]
ATTENTION = [  # (heads, kv heads, head dim, cached keys, what)
    (12, 12, 64, 128, "GPT-2, 128 keys"), (12, 12, 64, 1024, "GPT-2, 1K"),
    (8, 8, 32, 1024, "mha-9m, 1K"), (8, 8, 32, 4096, "mha-9m, 4K"),
    (9, 3, 64, 1024, "SmolLM2, 1K"), (9, 3, 64, 4096, "SmolLM2, 4K"),
]


def timed(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6  # us per call


def compare(sides: dict, calls: int, reps: int) -> dict[str, float]:
    for fn in sides.values():  # warm up every side once
        fn()
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):  # alternate: a slow spell hits every side alike
        for name, fn in sides.items():
            runs[name].append(timed(fn, calls))
    return {name: statistics.median(v) for name, v in runs.items()}


def cycling(fn, tensors: list):
    state = [0]

    def call():
        state[0] = (state[0] + 1) % len(tensors)
        return fn(*tensors[state[0]])
    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-mb", type=float, default=96, help="weights cycled per side, to read them from memory")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from lmlab.core import native
    from lmlab.core.linear import _onednn_linear

    if args.threads:
        torch.set_num_threads(args.threads)
    if native.kernels() is None:
        raise SystemExit("native_kernels: lmlab's fp32 decode kernels are not available here (see the warning)")
    gemv, attn = GEMV_SHAPES, ATTENTION
    if args.quick:
        gemv, attn, args.calls, args.reps, args.memory_mb = gemv[:2], attn[:1], 5, 1, 4
    if args.wait_quiet:
        wait_for_quiet(args.wait_quiet)
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {torch.get_num_threads()} threads; "
          f"median of {args.reps} x {args.calls} calls, us per call")
    torch.manual_seed(0)
    kernels = native.kernels()
    with torch.inference_mode():
        print("\n| GEMV, M = 1 | MB | oneDNN us (GB/s) | F.linear us | lmlab us (GB/s) | vs oneDNN |")
        print("|---|---|---|---|---|---|")
        for n, k, what in gemv:
            mb = n * k * 4 / 1e6
            copies = max(1, int(args.memory_mb // mb))
            sets = [(torch.randn(1, k), torch.randn(n, k), torch.randn(n)) for _ in range(copies)]
            t = compare({"onednn": cycling(_onednn_linear, sets), "flinear": cycling(F.linear, sets),
                         "lmlab": cycling(kernels.f32_gemv, sets)}, args.calls, args.reps)
            print(f"| {what} {n}x{k} | {mb:.2f} | {t['onednn']:.1f} ({mb / t['onednn'] * 1e3:.1f}) | "
                  f"{t['flinear']:.1f} | {t['lmlab']:.1f} ({mb / t['lmlab'] * 1e3:.1f}) | "
                  f"{t['onednn'] / t['lmlab']:.2f}x |", flush=True)
        print("\n| one-query attention | cache MB | SDPA us | lmlab us (GB/s) | vs SDPA |")
        print("|---|---|---|---|---|")
        for h, hkv, d, s, what in attn:
            mb = 2 * hkv * s * d * 4 / 1e6
            copies = max(1, int(args.memory_mb // mb))
            sets = []
            for _ in range(copies):
                kv = torch.randn(2, 1, hkv, s + 64, d)  # a larger allocation, narrowed as decoding reads it
                sets.append((torch.randn(1, h, 1, d), kv[0].narrow(2, 0, s), kv[1].narrow(2, 0, s)))
            gqa = h != hkv
            t = compare({"sdpa": cycling(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa), sets),
                         "lmlab": cycling(lambda q, k, v: native.decode_attention(q, k, v), sets)},
                        args.calls, args.reps)
            print(f"| {what} ({h}/{hkv} heads of {d}) | {mb:.1f} | {t['sdpa']:.1f} | {t['lmlab']:.1f} "
                  f"({mb / t['lmlab'] * 1e3:.1f}) | {t['sdpa'] / t['lmlab']:.2f}x |", flush=True)
        print("\n| RMSNorm, 1 row | F.rms_norm us | lmlab us | vs F.rms_norm |")
        print("|---|---|---|---|")
        for d in (256, 576, 768):
            x, w = torch.randn(1, 1, d), torch.randn(d)
            t = compare({"torch": lambda: F.rms_norm(x, (d,), w, 1e-5), "lmlab": lambda: native.rms_norm(x, w, 1e-5)},
                        args.calls, args.reps)
            print(f"| {d} | {t['torch']:.1f} | {t['lmlab']:.1f} | {t['torch'] / t['lmlab']:.1f}x |", flush=True)
        print("\n| one row | width | PyTorch us | lmlab us | vs PyTorch |")
        print("|---|---|---|---|---|")
        for d in (256, 576, 768):
            x, w, b = torch.randn(1, 1, d), torch.randn(d), torch.randn(d)
            t = compare({"torch": lambda: F.layer_norm(x, (d,), w, b, 1e-5),
                         "lmlab": lambda: native.layer_norm(x, w, b, 1e-5)}, args.calls, args.reps)
            print(f"| LayerNorm | {d} | {t['torch']:.1f} | {t['lmlab']:.1f} | {t['torch'] / t['lmlab']:.1f}x |", flush=True)
        for d in (768, 1536, 3072):
            h, u = torch.randn(1, 1, d), torch.randn(1, 1, d)
            t = compare({"torch": lambda: F.gelu(h, approximate="tanh"), "lmlab": lambda: native.gelu_tanh(h)},
                        args.calls, args.reps)
            print(f"| tanh GELU | {d} | {t['torch']:.1f} | {t['lmlab']:.1f} | {t['torch'] / t['lmlab']:.1f}x |", flush=True)
            t = compare({"torch": lambda: F.silu(h) * u, "lmlab": lambda: native.silu_mul(h, u)}, args.calls, args.reps)
            print(f"| silu(gate) * up | {d} | {t['torch']:.1f} | {t['lmlab']:.1f} | {t['torch'] / t['lmlab']:.1f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
