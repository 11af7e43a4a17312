"""Cendol's claim on the world: for a new language, LoRA on the old tokenizer vs vocabulary adaptation + training.

Cendol (Cahyawijaya et al. 2024) reports LoRA's shortcomings for language adaptation and proposes vocabulary
adaptation instead.  Here: the shipped base-language model moved to a derived language (default lang_a), every
arm trained for the same number of steps on the same documents per step (rows = whole documents, right-padded),
scored on the held-out documents (every 8th) in nats per character of the text (tokenizer-independent) and
tokens per sentence.  Arms:
  * ``lora``: LoRA (r 8, alpha 16, every linear layer) on the old tokenizer, base frozen;
  * ``full-old``: full fine-tuning on the old tokenizer (what LoRA approximates);
  * ``extend``: vocabulary extension with the target's frequent words (subword-mean rows), full fine-tuning;
  * ``swap``: WECHSEL tokenizer swap (target BPE of the old size), full fine-tuning.

Usage: ``PYTHONPATH=src python scripts/adapt_cendol.py --model world-llama-2m-1k [--steps 150] [--lang lang_a]
[--out docs/results/adapt_cendol.json]`` (one thread).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

import torch

from lmlab.adapt import extend_vocabulary, swap_tokenizer
from lmlab.adapt.wechsel import split_words
from lmlab.core.logprobs import sequence_logprobs
from lmlab.core.tokenizer import train_bpe
from lmlab.io.atomic import atomic_write_json
from lmlab.peft import LoraConfig, add_adapter
from lmlab.reference import load_reference
from lmlab.reference_names import WORLD_NAME


def encode_rows(tokenizer, docs: list[str], max_len: int) -> list[list[int]]:
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    return [(bos + tokenizer.encode(d))[:max_len] for d in docs]


def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])  # [B, T]
    return ids, torch.tensor([len(r) for r in rows])  # [B]


def nats_per_char(model, rows: list[list[int]], docs: list[str], batch: int = 16) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids, lengths = pad(rows[i : i + batch])
            total -= sequence_logprobs(model, ids, lengths=lengths).sum().item()
    return total / sum(len(d) for d in docs)


def train(model, rows: list[list[int]], steps: int, batch: int, lr: float, seed: int = 0) -> None:
    """AdamW on the trainable parameters; each step the same documents for every arm (seeded sampler)."""
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        ids, lengths = pad([rows[i] for i in rng.sample(range(len(rows)), batch)])
        loss = -sequence_logprobs(model, ids, lengths=lengths).sum() / (lengths - 1).sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=WORLD_NAME)
    ap.add_argument("--lang", default="lang_a")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="full fine-tuning learning rate")
    ap.add_argument("--lora-lrs", default="1e-3,3e-3", help="LoRA learning rates (the best is reported)")
    ap.add_argument("--new-tokens", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = load_reference(args.model)
    old_tok, world = ref.tokenizer, ref.world
    base = world.training_documents()
    target = [world.translate(d, args.lang) for d in base]
    train_docs, held_docs = [d for i, d in enumerate(target) if i % 8], target[::8]
    max_len = ref.model.config.max_seq_len
    n_sent = sum(d.count(".") for d in held_docs)
    seen = {w for s in split_words(base) for w in s}
    lexicon = world.languages[args.lang].lexicon
    used = sorted(b for b in lexicon if b in seen)
    random.Random(0).shuffle(used)
    dictionary = {b: lexicon[b] for b in used[: len(used) // 2]}
    words = Counter(w for d in train_docs for w in d.replace(".", " ").split())
    new_words = [w for w, _ in words.most_common() if old_tok.token_to_id(w) is None][: args.new_tokens]
    new_tok = train_bpe(target, len(old_tok))

    arms = {}
    for lr in [float(x) for x in args.lora_lrs.split(",")]:
        m = load_reference(args.model).model
        add_adapter(m, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj"]))
        arms[f"lora (old tokenizer, lr {lr:g})"] = (m, old_tok, lr)
    arms["full fine-tuning (old tokenizer)"] = (load_reference(args.model).model, old_tok, args.lr)
    ext_model, ext_tok = extend_vocabulary(ref.model, old_tok, new_words, init="subword_mean")
    arms[f"extension (+{len(new_words)} words, subword-mean) + full"] = (ext_model, ext_tok, args.lr)
    swap = swap_tokenizer(ref.model, old_tok, new_tok, "wechsel", copy_overlap=False, source_texts=base,
                          target_texts=target, dictionary=dictionary)
    arms["WECHSEL swap + full"] = (swap, new_tok, args.lr)
    print(f"{args.model} -> {args.lang}: {len(train_docs)} training / {len(held_docs)} held-out documents, "
          f"{args.steps} steps x {args.batch} documents each arm")
    results = {"model": args.model, "lang": args.lang, "steps": args.steps, "batch": args.batch, "arms": {}}
    for name, (model, tok, lr) in arms.items():
        t0 = time.time()
        train_rows, held_rows = encode_rows(tok, train_docs, max_len), encode_rows(tok, held_docs, max_len)
        before = nats_per_char(model.eval(), held_rows, held_docs)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train(model, train_rows, args.steps, args.batch, lr)
        after = nats_per_char(model, held_rows, held_docs)
        tps = sum(len(tok.encode(d)) for d in held_docs) / n_sent
        results["arms"][name] = {"tokens_per_sentence": tps, "nats_per_char_before": before,
                                 "nats_per_char_after": after, "trainable_parameters": trainable, "lr": lr}
        print(f"{name:48s} tokens/sentence {tps:5.1f}  nats/char {before:.3f} -> {after:.4f}  "
              f"trainable {trainable:,}  ({time.time() - t0:.0f} s)", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results)


if __name__ == "__main__":
    main()
