"""Deleting facts from a world reference model with ROME under the objectives of "Can Sensitive Information Be
Deleted From LLMs?" (Patil, Hase & Bansal 2024): fact erasure, the head-projection and max-entropy defences, each
with and without the input-rephrasing defence; the extraction attacks' success before and after.

Facts: ``world_edits(world, N, seed)``'s true facts (edit prompt = the relation's first training template); the
request deletes the true object. Input rephrasing: the relation's other training templates; the paraphrase attack
reads the held-out templates (never in training text, disjoint from the defence's). Columns: greedy exact-match
recall of the deleted answer on the edit prompts ("deleted", lower is better) and on the held-out paraphrases;
neighbourhood recall (other subjects' facts of the same relation, higher is better); attack success at top-k per
layer / per paraphrase (``lmlab.edit.attacks``): head projection (budget k x n_layers), the same on the layers
above the edited one only (the only lens a ROME edit at the subject token can change), probability delta,
paraphrase. Single seed. ``--model NAME`` picks the reference model.

    python scripts/edit_deletion.py --model world-llama-2m-1k --n 20
    python scripts/edit_deletion.py --model world-llama-2m-1k --n 20 --set layer=0 --set update_key=bare
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

from lmlab.data.recall import greedy_continuations, is_exact_match
from lmlab.data.world.templates import prompt_of
from lmlab.edit import EditRequest, edit
from lmlab.edit.deletion import RomeDeleteConfig
from lmlab.edit.attacks import (head_projection_candidates, paraphrase_candidates, probability_delta_candidates,
                                success_rate)
from lmlab.edit.evaluate import world_edits
from lmlab.reference import load_reference

COLS = ["deleted", "paraphrase", "neighbourhood", "attack_head_projection", "attack_hp_above_edit", "attack_prob_delta",
        "attack_paraphrase"]


def match_rate(model, tok, pairs) -> float:
    texts = greedy_continuations(model, tok, [p for p, _ in pairs])
    return sum(is_exact_match(t, a) for t, (_, a) in zip(texts, pairs)) / len(pairs)


def scores(model, tok, edits, k: int, edit_layer: int) -> dict[str, float]:
    """The columns; ``attack_hp_above_edit`` reads only the layers above the edited one (an edit at the subject's
    token cannot change the lens of layers <= the edited one at the prompt's last position)."""
    above = range(edit_layer + 1, model.config.n_layers)
    prompts = [e.request.text for e in edits]
    answers = [e.old for e in edits]
    return {
        "deleted": match_rate(model, tok, list(zip(prompts, answers))),
        "paraphrase": match_rate(model, tok, [(p, e.old) for e in edits for p in e.paraphrases]),
        "neighbourhood": match_rate(model, tok, [pa for e in edits for pa in e.neighbours]),
        "attack_head_projection": success_rate(head_projection_candidates(model, tok, prompts, k), answers, tok),
        "attack_hp_above_edit": success_rate(head_projection_candidates(model, tok, prompts, k, above), answers, tok),
        "attack_prob_delta": success_rate(probability_delta_candidates(model, tok, prompts, k), answers, tok),
        "attack_paraphrase": success_rate(paraphrase_candidates(model, tok, [e.paraphrases for e in edits], k),
                                          answers, tok),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-2m-1k")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--k", type=int, default=2, help="attack top-k per layer / per paraphrase (and defence_k)")
    p.add_argument("--objectives", default="fact_erasure,head_projection,max_entropy")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="rome_delete hyperparameters")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    ref = load_reference(args.model)
    model, tok, world = ref.model, ref.tokenizer, ref.world
    edits = world_edits(world, args.n, seed=args.seed)
    by_prompt = {prompt_of(rel.train_templates[0], "{}"): rel for rel in world.relations.values()}
    requests = [EditRequest(e.request.prompt, e.request.subject, e.old.strip()) for e in edits]
    rephrasings = [[prompt_of(t, "{}") for t in by_prompt[r.prompt].train_templates[1:]] for r in requests]
    docs = world.training_documents()
    print(f"model {args.model}; {args.n} facts (world_edits seed {args.seed}); k={args.k} (head projection budget "
          f"{args.k * model.config.n_layers}); rephrasings per fact {len(rephrasings[0])}; settings {json.dumps(settings)}")
    print("| objective | input rephrasing | " + " | ".join(COLS) + " | seconds |")
    print("|---|---|" + "---|" * (len(COLS) + 1))
    layer = RomeDeleteConfig.from_kwargs(settings).edit_layers(model.config.n_layers)[0]
    base = scores(model, tok, edits, args.k, layer)
    print("| unedited | | " + " | ".join(f"{base[c]:.3f}" for c in COLS) + " | |", flush=True)
    for objective in args.objectives.split(","):
        for rephrase in (False, True):
            start = time.perf_counter()
            delta = edit(model, tok, requests, method="rome_delete", corpus=docs, stats_dir=args.stats_dir,
                         objective=objective, defence_k=args.k, rephrasings=rephrasings if rephrase else (),
                         **settings)
            seconds = time.perf_counter() - start
            got = scores(model, tok, edits, args.k, delta.metadata["layers"][0])
            delta.revert(model)
            print(f"| {objective} (layer {delta.metadata['layers'][0]}) | {'yes' if rephrase else 'no'} | "
                  + " | ".join(f"{got[c]:.3f}" for c in COLS) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
