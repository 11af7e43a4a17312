"""The two training speed-ups BENCHMARKS.md reports as tried and not taken: ``torch.compile`` and oneDNN GEMMs.

Why this exists: BENCHMARKS.md quotes these figures; this is the command that reproduces them.

* ``compile``: the plain training loop of ``train_throughput.py`` (same model build, batches, AdamW, fp32,
  grad clip) on the eager model and on ``torch.compile(model)``, interleaved rounds; reports the first
  compiled step (compile time), then median and best step times of each.
* ``onednn``: for every linear layer shape of a config at its training batch (T = batch * seq rows), the three
  GEMMs of a training step -- forward ``X W^T``, input gradient ``dY W``, weight gradient ``dY^T X`` -- with
  PyTorch's kernels (``F.linear``/``mm``) and with oneDNN (``torch.ops.mkldnn._linear_pointwise``, the op
  ``lmlab.core.linear`` uses for inference); ratio = PyTorch time / oneDNN time, per shape and summed over
  the whole step's GEMMs.

    python benchmarks/train_alternatives.py compile --configs quickstart,d512 --threads 2
    python benchmarks/train_alternatives.py onednn --configs quickstart,d512 --threads 2

Timing figures: run on a quiet machine (``uptime`` load well below the core count).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS, QUICK_CONFIGS, Batches, PlainLoop, lmlab_forward, train_config  # noqa: E402

CONFIGS = {**QUICK_CONFIGS, **CONFIGS}  # tiny-gqa: a smoke-test size


def compile_case(name: str, rounds: int, steps: int, warmup: int) -> dict:
    from lmlab.train.run import build_model

    spec = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_config(spec, tmp)
    torch.manual_seed(cfg.run.seed)
    eager_model = build_model(cfg, spec["vocab"])
    torch.manual_seed(cfg.run.seed)
    compiled_model = build_model(cfg, spec["vocab"])
    batches = Batches(spec["vocab"], spec["seq"], spec["batch"], cfg.data.seed)
    eager = PlainLoop(eager_model, lmlab_forward, batches, cfg.optim)
    compiled = PlainLoop(torch.compile(compiled_model), lmlab_forward, batches, cfg.optim)
    t0 = time.perf_counter()
    first_loss = compiled.step()  # traces and compiles
    compile_s = time.perf_counter() - t0
    eager.step()
    for _ in range(warmup):
        eager.step()
        compiled.step()
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(rounds):
        for label, loop in (("eager", eager), ("compiled", compiled))[:: 1 if r % 2 == 0 else -1]:
            for _ in range(steps):
                t = time.perf_counter()
                loop.step()
                times[label].append(time.perf_counter() - t)
    return {"config": name, "compile_first_step_s": round(compile_s, 2), "first_loss": first_loss,
            **{f"{k}_median_ms": round(statistics.median(v) * 1e3, 1) for k, v in times.items()},
            **{f"{k}_best_ms": round(min(v) * 1e3, 1) for k, v in times.items()},
            "steps_per_loop": len(times["eager"])}


def _ms(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best * 1e3


def onednn_case(name: str, reps: int) -> dict:
    from collections import Counter

    from lmlab.train.run import build_model

    spec = CONFIGS[name]
    rows = spec["batch"] * spec["seq"]
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(train_config(spec, tmp), spec["vocab"])
    # (out, in) -> count: every matrix weight the step multiplies by; a tied embedding is the output head
    counts = Counter(tuple(p.shape) for p in model.parameters() if p.dim() == 2)
    shapes = [(out_f, in_f, n) for (out_f, in_f), n in sorted(counts.items())]
    onednn = torch.ops.mkldnn._linear_pointwise
    per_shape, total_torch, total_onednn = [], 0.0, 0.0
    for out_f, in_f, count in shapes:
        x, w, dy = torch.randn(rows, in_f), torch.randn(out_f, in_f), torch.randn(rows, out_f)
        wt, xt, dyt = w.t().contiguous(), x.t().contiguous(), dy.t().contiguous()
        ours = {"forward": lambda: F.linear(x, w), "grad_input": lambda: dy.mm(w), "grad_weight": lambda: dy.t().mm(x)}
        dnn = {"forward": lambda: onednn(x, w, None, "none", [], ""),
               "grad_input": lambda: onednn(dy, wt, None, "none", [], ""),
               "grad_weight": lambda: onednn(dyt, xt, None, "none", [], "")}
        row = {"shape": f"{out_f}x{in_f}", "count": count}
        for op in ours:
            assert torch.allclose(ours[op](), dnn[op](), rtol=1e-3, atol=1e-2), (name, out_f, in_f, op)
            a, b = _ms(ours[op], reps), _ms(dnn[op], reps)
            row[f"{op}_ratio"] = round(a / b, 2)
            total_torch += a * count
            total_onednn += b * count
        per_shape.append(row)
    return {"config": name, "rows": rows, "per_shape": per_shape,
            "step_gemms_torch_ms": round(total_torch, 1), "step_gemms_onednn_ms": round(total_onednn, 1),
            "overall_ratio": round(total_torch / total_onednn, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["compile", "onednn"])
    ap.add_argument("--configs", default="quickstart,d512", help=f"comma-separated from {sorted(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="compile: timed steps per loop per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5, help="onednn: calls per timing")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r} (known: {', '.join(sorted(CONFIGS))})")
        res = (compile_case(name, args.rounds, args.steps, args.warmup) if args.what == "compile"
               else onednn_case(name, args.reps))
        print(json.dumps(res), flush=True)
        results.append(res)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": sys.argv, "threads": torch.get_num_threads(),
                                              "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
