"""Context extension after a short fine-tune: each RoPE scaling (none, PI, dynamic NTK, YaRN) at factor s = 2,
fine-tuned for a few steps at twice the training length, then read at 1x / 2x / 4x the training length.

The papers' recipe, scaled down: position interpolation (Chen et al. 2023) and YaRN (Peng et al. 2023) extend a
model by fine-tuning it briefly at the target length with the scaled rotary frequencies (PI: 1,000 steps,
YaRN: 400 steps, both at lr 2e-5 on 7B models); here the small world model (trained at 128 tokens) gets
``--steps`` AdamW steps on random ``2 x 128``-token segments of the world text. "none" is the control: the
same fine-tune at the longer length with plain RoPE, so a gain from seeing long windows is not credited to a
scaling. The text is split in interleaved blocks of 4x the training length: every ``--heldout-every``-th block
is held out for perplexity (non-overlapping windows inside each held-out block, every token scored), the
fine-tuning segments come from the other blocks (so both sides sample the whole world text). Every row is
measured twice in one run: before fine-tuning (the same scaling config, s = 2 at every length) and after.

Not a timing benchmark; a few minutes at nice 10 on one thread:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/rope_finetune.py --model world-llama-0.9m --steps 150
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmlab.efficient.calibration import perplexity, token_stream, windows
from lmlab.errors import LmlabError
from lmlab.reference import NAME, load_reference

SCALINGS = ("none", "linear (PI)", "dynamic NTK", "YaRN")


def scaling_config(name: str, s: float, original: int) -> tuple[str, tuple]:
    """(rope_scaling kind, sorted params) for ``name`` at factor ``s`` (HF ``rope_scaling`` semantics)."""
    kind, params = {
        "none": ("default", {}),
        "linear (PI)": ("linear", {"factor": s}),
        "dynamic NTK": ("dynamic", {"factor": s}),
        "YaRN": ("yarn", {"factor": s, "original_max_position_embeddings": original}),
    }[name]
    return kind, tuple(sorted(params.items()))


def finetune(model, segments: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """``steps`` AdamW steps (10-step linear warm-up, then constant ``lr``) on rows of ``segments`` [n, T+1];
    returns the loss every step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    losses = []
    for _ in range(steps):
        rows = segments[torch.randint(0, len(segments), (batch,), generator=g)]  # [b, T+1]
        logits = model(rows[:, :-1])  # [b, T, vocab]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=NAME, help=f"shipped reference model (default {NAME}, trained at 128 tokens)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--factor", type=float, default=2.0, help="scaling factor s; fine-tune length = s x training")
    p.add_argument("--heldout-every", type=int, default=4, help="hold out every N-th block for evaluation")
    p.add_argument("--only", default=None, help="comma-separated scaling names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.lr <= 0 or args.factor <= 1 or args.heldout_every < 2:
        raise LmlabError("--steps/--batch must be >= 1, --lr > 0, --factor > 1, --heldout-every >= 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ref = load_reference(args.model)
    original = ref.model.config.max_seq_len
    stream = token_stream(ref.tokenizer, ref.world.training_documents())
    train_len = int(original * args.factor)
    lengths = (original, train_len, 2 * train_len)
    blocks = windows(stream, lengths[-1])  # [n_blocks, 4x]
    held = torch.arange(len(blocks)) % args.heldout_every == args.heldout_every - 1
    train_blocks = blocks[~held]  # [n_train, 4x]
    g = torch.Generator().manual_seed(args.seed)
    rows = torch.randint(0, len(train_blocks), (4096,), generator=g)
    starts = torch.randint(0, lengths[-1] - train_len, (4096,), generator=g)
    segments = torch.stack([train_blocks[r, s:s + train_len + 1] for r, s in zip(rows.tolist(), starts.tolist())])
    evals = {n: blocks[held].reshape(-1, n) for n in lengths}  # [k, n] windows inside the held-out blocks
    print(f"{ref.record['name']} trained at {original} tokens; fine-tune {args.steps} steps x {args.batch} x "
          f"{train_len} tokens, AdamW lr {args.lr}, s = {args.factor:g} in every row; held-out windows: "
          + ", ".join(f"{len(w)} x {n}" for n, w in evals.items()))
    print("| scaling (s = %g) | fine-tune | " % args.factor
          + " | ".join(f"ppl @ {n} ({n / original:g}x)" for n in lengths) + " | final loss | seconds |")
    print("|---|---|" + "---|" * (len(lengths) + 2))
    for name in SCALINGS:
        if args.only and name not in args.only.split(","):
            continue
        model = load_reference(args.model).model
        kind, params = scaling_config(name, args.factor, original)
        model.config = model.config.replace(rope_scaling=kind, rope_scaling_params=params)
        before = [perplexity(model, evals[n], batch_size=4) for n in lengths]
        print(f"| {name} | none | " + " | ".join(f"{v:.3f}" for v in before) + " | - | - |", flush=True)
        t0 = time.perf_counter()
        losses = finetune(model, segments, args.steps, args.batch, args.lr, args.seed)
        seconds = time.perf_counter() - t0
        after = [perplexity(model, evals[n], batch_size=4) for n in lengths]
        tail = sum(losses[-10:]) / len(losses[-10:])
        print(f"| {name} | {args.steps} steps | " + " | ".join(f"{v:.3f}" for v in after)
              + f" | {tail:.3f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
