"""Time and steps to reach a fixed held-out loss after a tokenizer swap, per embedding initialisation (WECHSEL,
mean, random) and from scratch -- the training effort WECHSEL claims to save ("up to 64x"), in wall time.

The shipped world model moved to a derived language (target BPE of the old size, as scripts/adapt_world_train.py),
full fine-tuning with AdamW on windows of the translated training documents; the held-out loss (nats per target
token, every 8th document; all arms share the target tokenizer) is measured every ``--eval-every`` steps, and
the training time excludes evaluation.  One thread.

    python benchmarks/adapt_init.py --model world-llama-2m-1k             # minutes, on 2 quiet cores
    python benchmarks/adapt_init.py --quick                               # smoke (seconds; not a measurement)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time

import torch


def windows(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    ids = [i for t in texts for i in tokenizer.encode(t + " ")]
    n = len(ids) // length
    return torch.tensor(ids[: n * length]).view(n, length)  # [n, length]


def heldout_loss(model, data: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(data)  # [n, T, vocab]
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), data[:, 1:].flatten()).item()


def time_to_target(model, data, heldout, target: float, max_steps: int, batch: int, lr: float, every: int) -> dict:
    """Train until the held-out loss is <= ``target`` (checked every ``every`` steps) or ``max_steps``."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loss = heldout_loss(model.eval(), heldout)
    seconds, step = 0.0, 0
    while loss > target and step < max_steps:
        model.train()
        t0 = time.perf_counter()
        for _ in range(min(every, max_steps - step)):
            rows = data[torch.randint(len(data), (batch,), generator=gen)]  # [batch, T]
            logits = model(rows)
            train_loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten())
            opt.zero_grad()
            train_loss.backward()
            opt.step()
            step += 1
        seconds += time.perf_counter() - t0
        loss = heldout_loss(model.eval(), heldout)
    return {"reached": loss <= target, "steps": step, "train_seconds": round(seconds, 3), "heldout_loss": loss}


def main() -> None:
    from lmlab.adapt import swap_tokenizer
    from lmlab.adapt.wechsel import split_words
    from lmlab.core.model import Transformer
    from lmlab.core.tokenizer import train_bpe
    from lmlab.reference import load_reference
    from lmlab.reference_names import WORLD_NAME

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=WORLD_NAME)
    ap.add_argument("--lang", default="lang_a")
    ap.add_argument("--target", type=float, default=2.0, help="held-out loss to reach, nats per target token")
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 30 documents")
    args = ap.parse_args()
    if args.quick:
        args.max_steps, args.eval_every = 4, 2
    torch.set_num_threads(1)
    ref = load_reference(args.model)
    src_tok = ref.tokenizer
    base = ref.world.training_documents()[: 30 if args.quick else None]
    target = [ref.world.translate(d, args.lang) for d in base]
    seen = {w for s in split_words(base) for w in s}
    lexicon = ref.world.languages[args.lang].lexicon
    used = sorted(b for b in lexicon if b in seen)
    random.Random(0).shuffle(used)
    dictionary = {b: lexicon[b] for b in used[: len(used) // 2]}
    tgt_tok = train_bpe(target, len(src_tok))
    length = 64
    data = windows(tgt_tok, [d for i, d in enumerate(target) if i % 8], length)
    heldout = windows(tgt_tok, target[::8], length)
    print(json.dumps({"model": args.model, "lang": args.lang, "target": args.target, "train_tokens": data.numel(),
                      "heldout_tokens": heldout.numel(), "batch": args.batch, "window": length, "lr": args.lr}))
    for init in ("wechsel", "mean", "random", "scratch"):
        if init == "scratch":
            config = dataclasses.replace(ref.model.config, vocab_size=tgt_tok.max_token_id + 1)
            model = Transformer(config).init_weights(seed=0)
        else:
            extra = {"source_texts": base, "target_texts": target, "dictionary": dictionary} if init == "wechsel" else {}
            model = swap_tokenizer(ref.model, src_tok, tgt_tok, init, copy_overlap=False, **extra)
        result = time_to_target(model, data, heldout, args.target, args.max_steps, args.batch, args.lr, args.eval_every)
        print(json.dumps({"init": init, **result}), flush=True)


if __name__ == "__main__":
    main()
