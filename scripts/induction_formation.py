"""How fast does a model form a copy mechanism? Training on repeated random segments (issue 11, docs/claims.md).

Why: the world reference retrieves nothing because it has no induction heads (``lmlab.eval.copying``). This
trains a model on the classic trigger -- rows of random segments, each followed by its copy, at random offsets,
loss on the copies only -- and prints the loss and the copy gain every ``--every`` steps, so the length of the
plateau before the circuit forms can be measured for a shape, a token pool, a learning rate or a warm start.

    PYTHONPATH=src python scripts/induction_formation.py --pool 64 --steps 400 --lr 3e-3
    PYTHONPATH=src python scripts/induction_formation.py --init world-llama-2m-1k --pool 64,256,all --switch 100,200
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
import time

import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError
from lmlab.eval.copying import repeated_tokens_score

FIRST_TOKEN = 3  # segments avoid the lowest ids (special tokens in the world tokenizers)


def build(args) -> Transformer:
    if args.init:
        from lmlab.reference import load_reference

        return load_reference(args.init).model.float().train()
    cfg = ModelConfig.llama_like(args.vocab, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                                 max_seq_len=max(args.row, 128), tie_embeddings=not args.untied)
    if args.learned_positions:
        cfg = dataclasses.replace(cfg, pos_type="learned")
    model = Transformer(cfg).init_weights(seed=args.seed).float().train()
    if args.shared:  # a constant component in every embedding: something position-only heads can use
        with torch.no_grad():
            u = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(args.seed + 7))
            model.embed.weight += args.shared * model.embed.weight.norm(dim=1).mean() * u / u.norm()
    return model


def batch(rng: random.Random, pool: int, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` rows of ``width`` tokens: segments of 8-40 tokens from the first ``pool`` ids, each followed
    by its copy, after a separator; labels only on the copies (the segments themselves are unpredictable)."""
    ids, keep = [], []
    for _ in range(rows):
        row, lab = [], []
        while len(row) < width + 1:
            seg = [FIRST_TOKEN + rng.randrange(pool) for _ in range(rng.randint(8, 40))]
            row += [0] + seg + seg
            lab += [False] * (1 + len(seg)) + [True] * len(seg)
        ids.append(row[:width + 1])
        keep.append(lab[:width + 1])
    w, k = torch.tensor(ids), torch.tensor(keep)  # [B, T + 1]
    return w[:, :-1], torch.where(k[:, 1:], w[:, 1:], torch.full_like(w[:, 1:], -100))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default=None, help="warm start from a shipped reference (default: a fresh model)")
    p.add_argument("--vocab", type=int, default=1958)
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--learned-positions", action="store_true")
    p.add_argument("--untied", action="store_true", help="separate input and output embeddings")
    p.add_argument("--shared", type=float, default=0.0, help="shared embedding component (x mean row norm)")
    p.add_argument("--pool", default="64", help="token pool sizes, comma-separated ('all' = the vocabulary)")
    p.add_argument("--switch", default="", help="steps at which the next pool size starts, comma-separated")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--row", type=int, default=256, help="tokens per row")
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stop-gain", type=float, default=None, help="stop once the copy gain reaches this (nats)")
    p.add_argument("--save", default=None, help="write the final model here (an HF checkpoint directory)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model = build(args)
        V = model.config.vocab_size
        pools = [V - FIRST_TOKEN if x == "all" else int(x) for x in args.pool.split(",")]
        starts = [0] + [int(x) for x in args.switch.split(",") if x]
        if len(starts) != len(pools) or any(not 0 < n <= V - FIRST_TOKEN for n in pools):
            raise LmlabError(f"--pool/--switch: need one start per pool after the first and pools in 1..{V - 3}")
    except (LmlabError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = time.time()
    print("step | pool | loss | chance | copy gain (pool) | seconds")
    for k in range(args.steps):
        pool = [n for s, n in zip(starts, pools) if k >= s][-1]
        x, y = batch(random.Random(k), pool, args.rows, args.row)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (k + 1) / args.warmup)
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (k + 1) % args.every == 0:
            model.eval()
            score = repeated_tokens_score(model, length=min(50, args.row // 2), rows=4, seed=1,
                                          low=FIRST_TOKEN, high=FIRST_TOKEN + pool)
            model.train()
            print(f"{k + 1} | {pool} | {loss.item():.3f} | {math.log(pool):.2f} | {score.copy_gain:.2f} | "
                  f"{time.time() - t0:.0f}", flush=True)
            if args.stop_gain is not None and score.copy_gain >= args.stop_gain:
                break
    if args.save:
        import lmlab

        lmlab.save(model.eval(), args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
