"""Knowledge-editing table on the shipped reference model: ROME / MEMIT / AlphaEdit at N counterfactual edits.

Edits are drawn from the world's true facts (``lmlab.edit.evaluate.world_edits``, seed 0): the first training
template is the edit prompt, another object of the same relation the new target; metrics are exact-match
efficacy, CounterFact's efficacy score p(new) > p(old), paraphrase (held-out templates, never in training text)
and neighbourhood (other subjects keep their answers). The unedited model's scores are the baseline row.
Key statistics: the world's training text (all ~10k keys). Batched edits (ROME applies its requests one after
another, as its reference code does); ``--batch B`` edits sequentially in batches of B (AlphaEdit carries its
state across batches). Single seed. ``--model NAME`` picks the reference model (``lmlab.reference_names``).

IKE (``--methods ike``) changes no weight: each edit's prompts are scored under its own context of ``--ike-k``
demonstrations drawn from a pool of other counterfactual edits (``world_edits`` with seed + 1, minus the edited
subjects); the contexts must fit the model's context (the 0.9M model's 128 tokens hold only a few demonstrations).
The world has 300 facts of the five edited relations, so counterfactual N is at most 300; ``--insertions`` draws
the edits instead from people of other world seeds whom the model has never seen (``lmlab.edit.world_insertions``:
insertions, not counterfactuals -- report them as such), which allows 1,000 and more.

Usage (minutes on a busy 2-core machine)::

    python scripts/edit_table.py --n 10 --methods rome,memit,alphaedit
    python scripts/edit_table.py --n 10 100 --methods memit --set mom2_update_weight=100
    python scripts/edit_table.py --n 100 --methods memit,alphaedit --batch 10
    python scripts/edit_table.py --model world-llama-0.9m-1k --n 10 100 --methods ike --ike-k 32
    python scripts/edit_table.py --model world-llama-2m-1k --insertions --n 1000 --methods memit,rome
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from lmlab.edit import AlphaEditState, edit
from lmlab.edit.evaluate import evaluate_edits, world_edits
from lmlab.edit.world_insertions import insertion_edits
from lmlab.reference import load_reference


def ike_row(model, tok, world, edits, args, cols) -> str:
    """IKE scored on the same prompts, each under its own edit's context (no weight change)."""
    subjects = {e.request.subject for e in edits}
    pool = [e for e in world_edits(world, min(len(world.facts), 300), seed=args.seed + 1)
            if e.request.subject not in subjects]
    start = time.perf_counter()
    ctx = edit(model, tok, [e.request for e in edits], method="ike", pool=pool, k=args.ike_k)
    scores = evaluate_edits(model, tok, ctx.wrap_cases(edits))
    seconds = time.perf_counter() - start
    return (f"| ike | k={args.ike_k}, TF-IDF selection | {len(edits)} | " + " | ".join(f"{scores[c]:.3f}" for c in cols)
            + f" | {seconds:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="reference model name (default: lmlab.reference's default)")
    p.add_argument("--n", type=int, nargs="+", default=[10])
    p.add_argument("--ike-k", type=int, default=32, help="IKE demonstrations per edit (paper: 32)")
    p.add_argument("--methods", default="rome,memit,alphaedit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stats-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--insertions", action="store_true",
                   help="insert facts about people the model has never seen (allows N > 300) instead of counterfactuals")
    p.add_argument("--batch", type=int, default=0,
                   help="sequential editing: apply the N edits in consecutive batches of this size (0: one batch)")
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    ref = load_reference(args.model) if args.model else load_reference()
    model, tok, world = ref.model, ref.tokenizer, ref.world
    docs = world.training_documents()
    cols = ["efficacy", "efficacy_score", "paraphrase", "neighbourhood", "portability", "fluency"]
    print("| method | settings | N | " + " | ".join(cols) + " | seconds |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    for n in args.n:
        edits = (insertion_edits if args.insertions else world_edits)(world, n, seed=args.seed)
        base = evaluate_edits(model, tok, edits)
        print(f"| unedited | | {n} | " + " | ".join(f"{base[c]:.3f}" for c in cols) + " | |", flush=True)
        for method in args.methods.split(","):
            if method == "ike":
                print(ike_row(model, tok, world, edits, args, cols), flush=True)
                continue
            start = time.perf_counter()
            size = args.batch or n
            state = AlphaEditState() if method == "alphaedit" else None
            deltas = [edit(model, tok, [e.request for e in edits[i:i + size]], method=method, corpus=docs,
                           stats_dir=args.stats_dir, state=state, **settings) for i in range(0, n, size)]
            seconds = time.perf_counter() - start
            scores = evaluate_edits(model, tok, edits)
            for delta in reversed(deltas):
                delta.revert(model)
            shown = json.dumps(settings) if settings else "paper defaults"
            if args.insertions:
                shown += ", insertions (unseen people)"
            if args.batch:
                shown += f", sequential batches of {size}"
            print(f"| {method} | {shown} | {n} | " + " | ".join(f"{scores[c]:.3f}" for c in cols)
                  + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
