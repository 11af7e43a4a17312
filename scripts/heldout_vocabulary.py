"""Which held-out phrasings can a world model understand at all? Held-out recall split by vocabulary.

The world's held-out paraphrase templates and held-out question forms never appear in training text (by design).
Until session 13, 13 of the 18 held-out templates also used a *word* that no training text contains ("draws a
salary from", "can converse in"): a model has never seen that word in any context, so reading the phrasing means
ignoring it. The templates now recombine training words (tests/data/test_world_tasks.py pins it); three held-out
question forms still use an unseen word ("have", "talk", "lie"). This script lists such words, counts the probes
they affect, and measures each reference model's recall on the two halves:

- held-out templates / question forms whose every word occurs somewhere in the recipe's training text,
- those with at least one word that occurs nowhere in it.

    PYTHONPATH=src python scripts/heldout_vocabulary.py --models world-llama-2m-1k,world-llama-2m-1k-retrieval-2

The training text is the recipe's world mix (``weighted_texts`` with the recipe's kind weights, distinct texts);
the long-context tasks and copy rows add no English words. Subject and object names are excluded from the check.
"""

from __future__ import annotations

import argparse
import sys

import torch

from lmlab.data.recall import recall
from lmlab.data.world import WorldConfig, build_world
from lmlab.data.world.templates import template_words
from lmlab.reference import load_reference
from lmlab.train.world_recipe import WORLD_RECIPES, weighted_texts

def phrasing_words(probe) -> set[str]:
    """The words of a probe's prompt other than its subject's name (and the QA frame's 'Question'/'Answer')."""
    return template_words([probe.prompt.replace(probe.fact.subject, " ")]) - {"question", "answer"}


def split_recall(model, tokenizer, probes, seen: set[str]) -> dict:
    """Recall on the probes whose phrasing uses only seen words, and on the rest (one greedy answer per probe)."""
    by_form: dict[str, list] = {}
    for p in probes:
        by_form.setdefault(p.template_id, []).append(p)
    halves = {"seen": [0.0, 0], "unseen": [0.0, 0]}
    forms = []
    for form, ps in sorted(by_form.items()):
        unseen = sorted(phrasing_words(ps[0]) - seen)
        r = recall(model, tokenizer, ps)
        half = halves["unseen" if unseen else "seen"]
        half[0] += r * len(ps)
        half[1] += len(ps)
        forms.append((form, unseen, r, len(ps)))
    return {"forms": forms, **{k: (v[0] / v[1] if v[1] else float("nan"), v[1]) for k, v in halves.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="world-llama-2m-1k,world-llama-2m-1k-retrieval-2",
                   help="comma-separated shipped world references")
    p.add_argument("--recipe", default="world-llama-2m-1k-retrieval-2", help="whose kind weights give the training text")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.recipe not in WORLD_RECIPES:
        print(f"error: --recipe: unknown recipe {args.recipe!r} (known: {', '.join(WORLD_RECIPES)})", file=sys.stderr)
        return 2
    world = build_world(WorldConfig.quickstart(seed=WORLD_RECIPES[args.recipe].seed))
    seen = template_words(set(weighted_texts(world, WORLD_RECIPES[args.recipe].kind_weights)))
    lists = {"paraphrase": world.probes("heldout"), "question form": world.qa_probes("heldout")}
    print(f"training text: {len(seen)} distinct words")
    for label, probes in lists.items():
        unseen = [pr for pr in probes if phrasing_words(pr) - seen]
        print(f"held-out {label} probes using a word absent from all training text: {len(unseen)} of {len(probes)}")
    for name in args.models.split(","):
        ref = load_reference(name)
        print(f"\n## {name}\n\n| held-out list | form | words never in training text | recall | probes |\n|---|---|---|---:|---:|")
        summary = []
        for label, probes in lists.items():
            res = split_recall(ref.model, ref.tokenizer, probes, seen)
            for form, unseen, r, n in res["forms"]:
                print(f"| {label} | {form} | {', '.join(unseen) or '-'} | {r:.1%} | {n} |")
            summary.append(f"{label}: {res['seen'][0]:.1%} on {res['seen'][1]} probes with every word seen, "
                           f"{res['unseen'][0]:.1%} on {res['unseen'][1]} with an unseen word")
        print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
