"""Counterfactual edit requests (CounterFact / MQuAKE style) with their ground truth in the edited world.

Why: a knowledge-editing method is judged on *efficacy* (the edited prompt now gives the new object),
*generalisation* (paraphrases do too), *specificity* (neighbourhood prompts: other subjects with the same
relation and the old object keep their answer; Meng et al. 2022, ROME, CounterFact) and *portability*
(multi-hop questions follow the edit; Zhong et al. 2023, MQuAKE). The ground truth of the last one is the
world where the edit is true, which :meth:`World.apply_edit` builds, so every dependent answer is re-derived
rather than guessed.

Record (``edits.jsonl``): ``case_id``, ``subject``, ``relation``, ``old_object``, ``new_object``, ``prompt``
(training template 0), ``target_new`` / ``target_true`` (leading space), ``paraphrase_prompts`` (held-out
templates and held-out question forms; never in training text), ``neighbourhood`` (``[{prompt, answer}]``),
``two_hop`` (``[{prompt, relation, answer_before, answer_after}]`` for every two-hop probe whose path goes
through the edited fact, answers from the original and the edited world).
"""

from __future__ import annotations

import random

from lmlab.data.world.questions import QUESTIONS, qa_prompt
from lmlab.data.world.schema import Fact
from lmlab.data.world.templates import prompt_of

N_NEIGHBOURS = 5  # CounterFact uses up to 10 neighbourhood prompts; 5 keeps the file small for our world size


def edit_record(world, edited, fact: Fact, new_object: str, case_id: int, rng: random.Random) -> dict:
    """The request for changing ``fact`` to ``new_object``; ``edited`` is ``world.apply_edit(...)``."""
    relation = world.relations[fact.relation]
    paraphrases = [prompt_of(t, fact.subject) for t in relation.heldout_templates]
    paraphrases += [qa_prompt(q, fact.subject) for q in QUESTIONS[fact.relation].heldout]
    neighbours = [f for f in world.facts
                  if f.relation == fact.relation and f.object == fact.object and f.subject != fact.subject]
    neighbours = rng.sample(neighbours, min(N_NEIGHBOURS, len(neighbours)))
    before = {(p.fact.subject, p.template_id): p for p in world.two_hop_probes()}
    two_hop = []
    for probe in edited.two_hop_probes():
        if Fact(fact.subject, fact.relation, new_object) not in probe.hops:
            continue
        old = before.get((probe.fact.subject, probe.template_id))
        two_hop.append({"prompt": probe.prompt, "relation": probe.fact.relation, "subject": probe.fact.subject,
                        "answer_before": old.answer if old else None, "answer_after": probe.answer})
    return {
        "case_id": case_id, "subject": fact.subject, "relation": fact.relation,
        "old_object": fact.object, "new_object": new_object,
        "prompt": prompt_of(relation.train_templates[0], fact.subject),
        "target_new": " " + new_object, "target_true": " " + fact.object,
        "paraphrase_prompts": paraphrases,
        "neighbourhood": [{"prompt": prompt_of(relation.train_templates[0], f.subject), "answer": " " + f.object}
                          for f in neighbours],
        "two_hop": two_hop,
    }


def edit_requests(world, n: int, rng: random.Random) -> list[dict]:
    """``n`` requests over distinct facts (seeded), relations in turn so every relation is covered.

    The new object is drawn among objects of the right type; when the relation feeds a two-hop relation,
    one that changes at least one two-hop answer is preferred (otherwise portability is untestable).
    """
    by_relation: dict[str, list[Fact]] = {}
    for fact in world.facts:
        by_relation.setdefault(fact.relation, []).append(fact)
    pools = {r: rng.sample(fs, len(fs)) for r, fs in by_relation.items()}
    order = [r for r in world.relations if r in pools]
    chosen: list[Fact] = []
    while len(chosen) < n and any(pools.values()):
        for r in order:
            if pools[r] and len(chosen) < n:
                chosen.append(pools[r].pop())
    out = []
    for case_id, fact in enumerate(chosen):
        candidates = [o for o in world.names(world.relations[fact.relation].object_type) if o != fact.object]
        if not candidates:
            continue
        rng.shuffle(candidates)
        before = {p.template_id + p.prompt: p.answer for p in world.two_hop_probes() if fact in p.hops}
        new_object, edited = candidates[0], world.apply_edit(fact.subject, fact.relation, candidates[0])
        for candidate in candidates:
            trial = world.apply_edit(fact.subject, fact.relation, candidate)
            after = {p.template_id + p.prompt: p.answer for p in trial.two_hop_probes()
                     if Fact(fact.subject, fact.relation, candidate) in p.hops}
            if any(after.get(k) != v for k, v in before.items()):
                new_object, edited = candidate, trial
                break
        out.append(edit_record(world, edited, fact, new_object, case_id, rng))
    return out
