"""Dynamic tokenization on the world: sequence-length reduction vs quality at several merge budgets.

The model (frozen) scores held-out base-language documents (every 8th; the hypernetwork trains on the other
7/8) re-tokenized with each batch's own merges; quality is nats per character of the document (BOS prepended, so
every character is predicted; the same text at every budget).  Two boundary modes: merges inside words (the
paper's encoder setting) and across words (its decoder prefilling setting).  Rows: the untrained hypernetwork
(= mean of the parts' embeddings) and the trained one.

Usage: ``PYTHONPATH=src python scripts/adapt_dynamic_tokenization.py --model world-llama-2m-1k
[--budgets 0,8,16,32,64,128] [--steps 300] [--modes within,across] [--out docs/results/adapt_dynamic_tokenization.json]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lmlab.adapt.dynamic_tokenization import (
    DynamicTokenizationConfig,
    dynamic_nll,
    merge_batch,
    new_hypernet,
    train_hypernet,
)
from lmlab.io.atomic import atomic_write_json
from lmlab.reference import load_reference
from lmlab.reference_names import WORLD_NAME


def evaluate(model, hypernet, tokenizer, rows, chars, budget, batch, config) -> dict:
    """Units per row and nats per character over ``rows``, merged per consecutive batch of ``batch`` rows."""
    nll, units = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            b = merge_batch(tokenizer, rows[i : i + batch], model.config.vocab_size, budget, config)
            nll += dynamic_nll(model, hypernet, b).sum().item()
            units += b.n_units
    return {"units_per_row": units / len(rows), "nats_per_char": nll / sum(chars)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=WORLD_NAME)
    ap.add_argument("--budgets", default="0,8,16,32,64,128")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--modes", default="within,across", help="boundary modes: within (words), across (words)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = load_reference(args.model)
    model, tok = ref.model.eval(), ref.tokenizer
    budgets = [int(b) for b in args.budgets.split(",")]
    docs = ref.world.training_documents()
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [(bos + tok.encode(d))[: model.config.max_seq_len] for d in docs]
    chars = [len(tok.decode(r[len(bos):])) for r in rows]
    held = [i for i in range(len(rows)) if i % 8 == 0]
    train_rows = [r for i, r in enumerate(rows) if i % 8]
    held_rows, held_chars = [rows[i] for i in held], [chars[i] for i in held]
    print(f"{args.model}: {len(train_rows)} training rows, {len(held_rows)} held-out rows "
          f"({sum(len(r) for r in held_rows) / len(held_rows):.1f} tokens, {sum(held_chars) / len(held_rows):.0f} chars each)")
    results = {"model": args.model, "steps": args.steps, "batch": args.batch, "lr": args.lr, "modes": {}}
    modes = [m.strip() for m in args.modes.split(",")]
    for mode, word_boundaries in (("within words", True), ("across words", False)):
        if mode.split()[0] not in modes:
            continue
        config = DynamicTokenizationConfig(steps=args.steps, batch=args.batch, lr=args.lr,
                                           word_boundaries=word_boundaries,
                                           train_budgets=tuple(b for b in budgets if b > 0) or (8,))
        t0 = time.time()
        trained = train_hypernet(model, tok, train_rows, config)
        print(f"## {mode}: hypernetwork trained in {time.time() - t0:.0f} s")
        mean = new_hypernet(model, config).eval()
        table = []
        for budget in budgets:
            row = {"budget": budget}
            for name, hyper in (("mean_of_parts", mean), ("hypernet", trained)):
                r = evaluate(model, hyper, tok, held_rows, held_chars, budget, args.batch, config)
                row["units_per_row"] = r["units_per_row"]
                row[name] = r["nats_per_char"]
            table.append(row)
        base = table[0]["units_per_row"] if budgets[0] == 0 else None
        for row in table:
            red = f"{100 * (1 - row['units_per_row'] / base):5.1f}%" if base else "  n/a"
            print(f"budget {row['budget']:4d}: {row['units_per_row']:5.1f} tokens/row (-{red}), nats/char "
                  f"mean-of-parts {row['mean_of_parts']:.4f}, hypernetwork {row['hypernet']:.4f}", flush=True)
        results["modes"][mode] = table
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, results)


if __name__ == "__main__":
    main()
