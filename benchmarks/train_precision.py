"""fp32 vs bf16 autocast for a world reference's training step, on this machine: which precision is faster here?

A recipe's ``precision`` decides how long it trains, and which one is faster depends on the CPU: bf16 GEMMs run on
oneDNN, which reorders a plain (unpacked) weight into its blocked layout on every call, and training changes the
weights every step, so nothing can stay packed. On session 17's host a 3 x 1,152 step took 444 ms in bf16 against
613 in fp32; on session 19's, 647 against 410 (docs/claims.md, issue 11, session 19).

The model is the recipe's shape (``WORLD_RECIPES[--recipe]``: d_model, layers, heads, context; vocabulary
``--vocab``, 1,958 for the shipped world tokenizer), built the way the recipe builds it
(``lmlab.train.run.build_model``). Each step is the Trainer's computation without the data pipeline: forward
under the precision's autocast, fp32 cross-entropy, backward, AdamW. Timed per batch shape of the recipe (its long
rows of ``block_size`` and its short rows of ``short_block``); the two precisions alternate over ``--rounds``
rounds, and the median step is reported. Then the largest GEMM of the step (the output head, rows x d_model x
vocab) alone, fp32 against bf16. The bf16/fp32 ratio is the figure to read: above 1, bf16 is slower here.

    python benchmarks/train_precision.py                        # world-llama-2m-1k-v6's shapes, 2 threads
    python benchmarks/train_precision.py --recipe world-llama-2m-1k --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from lmlab.config_io import load_config
from lmlab.train.config import TrainConfig
from lmlab.train.run import build_model
from lmlab.train.world_recipe import WORLD_RECIPES


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def step_seconds(model, opt, ids: torch.Tensor, precision: str, steps: int) -> list[float]:
    """Wall time of each of ``steps`` training steps on ``ids`` [B, T]."""
    vocab = model.config.vocab_size
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast(precision):
            logits = model(ids)  # [B, T, vocab]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def gemm_seconds(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 20) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t0) / reps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="world-llama-2m-1k-v6", choices=sorted(WORLD_RECIPES))
    p.add_argument("--vocab", type=int, default=1958)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round, after 2 warm-up steps")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = WORLD_RECIPES[args.recipe]
    cfg = load_config(TrainConfig, None, [f"model.d_model={r.d_model}", f"model.n_layers={r.n_layers}",
                                          f"model.n_heads={r.n_heads}", f"model.max_seq_len={r.block_size}",
                                          f"model.vocab_size={args.vocab}"])
    print(f"{args.recipe}: d_model {r.d_model}, {r.n_layers} layers, vocab {args.vocab}; recipe precision "
          f"{r.precision}; {args.threads} threads; torch {torch.__version__}")
    shapes = [(r.long_rows, r.block_size), (r.short_rows, r.short_block)]
    medians: dict[tuple, dict[str, float]] = {s: {} for s in shapes}
    for shape in shapes:
        ids = torch.randint(0, args.vocab, shape)
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for precision in runs:  # warm-up
            model = build_model(cfg, args.vocab)  # seeded by run.seed: the same weights every time
            step_seconds(model, torch.optim.AdamW(model.parameters(), lr=1e-3), ids, precision, 2)
        for i in range(args.rounds):
            for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
                model = build_model(cfg, args.vocab)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                step_seconds(model, opt, ids, precision, 1)
                runs[precision] += step_seconds(model, opt, ids, precision, args.steps)
        for precision, times in runs.items():
            medians[shape][precision] = statistics.median(times)
    print(f"{'batch':>10} {'fp32 ms':>9} {'bf16 ms':>9} {'bf16/fp32':>10} {'fp32 tok/s':>11} {'bf16 tok/s':>11}")
    for (rows, t), m in medians.items():
        print(f"{rows:>3} x {t:<5} {m['fp32'] * 1e3:9.0f} {m['bf16'] * 1e3:9.0f} {m['bf16'] / m['fp32']:10.2f} "
              f"{rows * t / m['fp32']:11,.0f} {rows * t / m['bf16']:11,.0f}")
    rows = r.long_rows * r.block_size
    f32 = gemm_seconds(rows, r.d_model, args.vocab, torch.float32)
    b16 = gemm_seconds(rows, r.d_model, args.vocab, torch.bfloat16)
    print(f"output-head GEMM {rows} x {r.d_model} x {args.vocab}: fp32 {f32 * 1e3:.2f} ms, bf16 {b16 * 1e3:.2f} ms, "
          f"bf16/fp32 {b16 / f32:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
