"""Steering measurements on the shipped reference model, for docs/claims.md ("Steering and guided decoding").

    PYTHONPATH=src python scripts/steer_claims.py

1. ActAdd shifts the next-token distribution toward a target word: vector " Stinok" - " Gramotrek" (two
   birth/home cities, single tokens) at blocks.1.resid_pre; for every person's "NAME was born in" prompt, the
   probability of " Stinok" as the next token, base vs steered (front and all positions, several coefficients),
   and the perplexity of unrelated world text (fact documents) under the same steering.
2. Concept directions: held-out pair accuracy of the name-gender direction (counterfactual pairs) and of the
   sentiment direction (attribute sentences the model never saw), per layer.
"""

from __future__ import annotations

import math

import torch

from lmlab.reference import load_reference
from lmlab.steer import actadd, concept_direction


@torch.no_grad()
def target_prob(model, rows, target: int) -> float:
    probs = []
    for r in rows:
        probs.append(float(model(torch.tensor([r]))[0, -1].softmax(-1)[target]))
    return sum(probs) / len(probs)


@torch.no_grad()
def perplexity(model, rows) -> float:
    nll, n = 0.0, 0
    for r in rows:
        x = torch.tensor([r])
        logp = model(x)[0, :-1].log_softmax(-1)
        nll -= float(logp.gather(1, x[0, 1:, None]).sum())
        n += len(r) - 1
    return math.exp(nll / n)


def main() -> None:
    torch.set_num_threads(1)
    ref = load_reference()
    m, tok, world = ref.model, ref.tokenizer, ref.world
    people = [e.name for e in world.entities["person"]]
    prompts = [tok.encode(f"{p} was born in") for p in people]
    target, other = tok.encode(" Stinok"), tok.encode(" Gramotrek")
    assert len(target) == 1 and len(other) == 1
    docs = [tok.encode(d)[:96] for d in world.training_documents()[:40]]
    word = actadd(m, tok, " Stinok", " Gramotrek", layer=1)
    sentence = actadd(m, tok, "The home of Trodina Shoba is in Stinok", "The home of Trodina Shoba is in Gramotrek",
                      layer=1)
    print(f"prompts: {len(prompts)} people; perplexity text: {len(docs)} fact documents (<= 96 tokens)")
    print("| vector | positions | coeff | P(' Stinok' next) | perplexity of fact documents |")
    print("|---|---|---|---|---|")
    print(f"| none | - | 0 | {target_prob(m, prompts, target[0]):.3f} | {perplexity(m, docs):.3f} |")
    for name, vec, positions in (("word pair", word, "front"), ("sentence pair", sentence, "front"),
                                 ("word pair", word, "all")):
        for coeff in (0.5, 1.0, 2.0, 4.0, 8.0):
            with vec.apply(m, coeff=coeff, positions=positions):
                p, ppl = target_prob(m, prompts, target[0]), perplexity(m, docs)
            print(f"| {name} | {positions} | {coeff:g} | {p:.3f} | {ppl:.3f} |")
    pairs = world.counterfactual_pairs()
    fem, mal = [c["female_text"] for c in pairs], [c["male_text"] for c in pairs]
    by: dict = {}
    for e in world.attribute_examples():
        by.setdefault((e.subject, e.formality), {})[e.sentiment] = e.text
    keys = sorted(by)
    pos, neg = [by[k][1] for k in keys], [by[k][-1] for k in keys]
    print("\n| concept | pairs (fit / held out) | layer 0 | layer 1 | layer 2 | layer 3 |")
    print("|---|---|---|---|---|---|")
    for name, a, b in (("first-name gender", fem, mal), ("sentiment (never seen)", pos, neg)):
        n = len(a) // 2
        accs = []
        for layer in range(m.config.n_layers):
            d = concept_direction(m, tok, a[:n], b[:n], layer)
            accs.append(float((d.score(m, tok, a[n:]) > d.score(m, tok, b[n:])).float().mean()))
        print(f"| {name} | {n} / {len(a) - n} | " + " | ".join(f"{x:.2f}" for x in accs) + " |")


if __name__ == "__main__":
    main()
