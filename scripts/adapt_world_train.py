"""Loss against training tokens after a tokenizer swap, per initialisation (WECHSEL's training-effort claim, on
the world): the reference model moved to lang_a (see scripts/adapt_world.py for the setup) and trained on the
lang_a translation of the base documents; "scratch" is the same architecture from random weights.

Usage: ``python scripts/adapt_world_train.py [--steps 120] [--lr 1e-3] [--lang lang_a]`` (one thread; minutes).
Held-out loss is in nats per target token (all runs share the new tokenizer, so tokens are comparable).
"""

from __future__ import annotations

import argparse
import random

import torch

from lmlab.adapt import swap_tokenizer
from lmlab.adapt.wechsel import split_words
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.reference import load_reference


def windows(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    ids = [i for t in texts for i in tokenizer.encode(t + " ")]
    n = len(ids) // length
    return torch.tensor(ids[: n * length]).view(n, length)  # [n, length]


def heldout_loss(model, data: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(data)  # [n, T, vocab]
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), data[:, 1:].flatten()).item()


def train(model, data: torch.Tensor, heldout: torch.Tensor, steps: int, batch: int, lr: float, every: int) -> list:
    gen = torch.Generator().manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve = [(0, heldout_loss(model.eval(), heldout))]
    model.train()
    for step in range(1, steps + 1):
        rows = data[torch.randint(len(data), (batch,), generator=gen)]  # [batch, T]
        logits = model(rows)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            curve.append((step, heldout_loss(model.eval(), heldout)))
            model.train()
    return curve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lang", default="lang_a")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = load_reference()
    world, src_tok = ref.world, ref.tokenizer
    base = world.training_documents()
    target = [world.translate(d, args.lang) for d in base]
    seen = {w for s in split_words(base) for w in s}
    lexicon = world.languages[args.lang].lexicon
    used = sorted(b for b in lexicon if b in seen)
    random.Random(0).shuffle(used)
    dictionary = {b: lexicon[b] for b in used[: len(used) // 2]}
    tgt_tok = train_bpe(target, len(src_tok))
    length = 64
    train_docs = [d for i, d in enumerate(target) if i % 8]  # every 8th document held out
    data, heldout = windows(tgt_tok, train_docs, length), windows(tgt_tok, target[::8], length)
    print(f"{args.lang}: {data.numel()} training tokens, {heldout.numel()} held-out tokens, {args.steps} steps "
          f"x {args.batch} x {length}, AdamW lr {args.lr}")
    runs = {}
    for init in ("wechsel", "mean", "random"):
        extra = {"source_texts": base, "target_texts": target, "dictionary": dictionary} if init == "wechsel" else {}
        runs[init] = swap_tokenizer(ref.model, src_tok, tgt_tok, init, copy_overlap=False, **extra)
    scratch = Transformer(runs["mean"].config).init_weights(seed=0)
    runs["scratch"] = scratch
    every = max(1, args.steps // 6)
    for name, model in runs.items():
        curve = train(model, data, heldout, args.steps, args.batch, args.lr, every)
        print(f"{name:8s} " + "  ".join(f"{s}:{v:.3f}" for s, v in curve), flush=True)


if __name__ == "__main__":
    main()
