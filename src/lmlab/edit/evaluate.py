"""Editing metrics against the world's ground truth: efficacy, paraphrase generalisation, neighbourhood locality.

- ``world_edits(world, n)``: counterfactual requests built from true facts (CounterFact-style): the fact's
  first training template as the edit prompt, a different object of the same relation as the new target, the
  relation's held-out templates (never in training text) as paraphrases, and other subjects' facts of the
  same relation as the neighbourhood, and two-hop questions whose answer is re-derived from the new object
  (``born_in`` -> X: "The country where S was born is" -> city_in(X)) as portability.
- ``evaluate_edits(model, tok, edits)``: exact-match rates under greedy decoding (the library's recall rule,
  with BOS), CounterFact's efficacy score ``P[log p(new) > log p(old)]``, and fluency: the n-gram entropy of
  greedy text generated from each edited subject (ROME Sec. 4.2 / EasyEdit: ``(2/3 H_2 + 4/3 H_3) / 2`` in bits
  over word bi- and tri-grams), which falls when an edit makes the model repeat itself.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmlab.core.logprobs import sequence_logprobs
from lmlab.data.recall import greedy_continuations, is_exact_match
from lmlab.edit.requests import EditRequest
from lmlab.errors import LmlabError

DEFAULT_RELATIONS = ("born_in", "lives_in", "works_for", "speaks", "works_as")


@dataclass
class WorldEdit:
    request: EditRequest
    old: str  # the true object, leading space
    paraphrases: list[str] = field(default_factory=list)  # prompts
    neighbours: list[tuple[str, str]] = field(default_factory=list)  # (prompt, true answer) of other subjects
    portability: list[tuple[str, str]] = field(default_factory=list)  # two-hop (prompt, answer in the edited world)


def world_edits(world, n: int, seed: int = 0, relations: Sequence[str] = DEFAULT_RELATIONS,
                n_neighbours: int = 3) -> list[WorldEdit]:
    """``n`` counterfactual edits on distinct (subject, relation) facts of ``world``, reproducible by ``seed``."""
    from lmlab.data.world.templates import prompt_of

    rng = random.Random(seed)
    facts = [f for f in world.facts if f.relation in relations]
    if n > len(facts):
        raise LmlabError(f"world_edits: n={n} but the world has only {len(facts)} facts of {list(relations)}")
    chosen = rng.sample(facts, n)
    edited_subjects = {f.subject for f in chosen}
    out = []
    for f in chosen:
        rel = world.relations[f.relation]
        objects = sorted({g.object for g in world.facts if g.relation == f.relation} - {f.object})
        new = rng.choice(objects)
        others = [g for g in facts if g.relation == f.relation and g.subject not in edited_subjects]
        neigh = rng.sample(others, min(n_neighbours, len(others)))
        # two-hop consequences re-derived in the edited world: r2(new object)
        port = [(prompt_of(t, f.subject), " " + world.lookup(new, hop.path[1]))
                for hop in world.two_hop_relations.values() if hop.path[0] == f.relation
                and world.lookup(new, hop.path[1], default=None) is not None for t in hop.templates]
        out.append(WorldEdit(
            EditRequest(prompt_of(rel.train_templates[0], "{}"), f.subject, new), " " + f.object,
            [prompt_of(t, f.subject) for t in rel.heldout_templates],
            [(prompt_of(rel.train_templates[0], g.subject), " " + g.object) for g in neigh], port))
    return out


def _match_rate(model, tok, prompts: list[str], answers: list[str]) -> float:
    if not prompts:
        return float("nan")
    texts = greedy_continuations(model, tok, prompts)
    return sum(is_exact_match(t, a) for t, a in zip(texts, answers)) / len(prompts)


@torch.no_grad()
def _logp(model, tok, prompts: list[str], answers: list[str]) -> torch.Tensor:
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [(bos + tok.encode(p), tok.encode(a)) for p, a in zip(prompts, answers)]
    T = max(len(p) + len(a) for p, a in rows)
    ids = torch.tensor([p + a + [0] * (T - len(p) - len(a)) for p, a in rows], device=model.device)
    return sequence_logprobs(model, ids, prompt_lengths=torch.tensor([len(p) for p, _ in rows]),
                             lengths=torch.tensor([len(p) + len(a) for p, a in rows]))


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Weighted mean of the word n-gram entropies (bits) of ``text``; 0 for text with no n-gram."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    out = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        out.append(w * -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(out) / len(out)


def fluency(model, tok, edits: Sequence[WorldEdit], max_new_tokens: int = 40) -> float:
    """Mean n-gram entropy of greedy generations prompted with each edited subject's name."""
    texts = greedy_continuations(model, tok, [e.request.subject for e in edits], max_new_tokens=max_new_tokens)
    return sum(ngram_entropy(e.request.subject + t) for e, t in zip(edits, texts)) / len(edits)


def evaluate_edits(model, tok, edits: Sequence[WorldEdit]) -> dict[str, float]:
    """Efficacy (new target on the edit prompt), efficacy score (p(new) > p(old)), paraphrase (new target on
    held-out templates), neighbourhood (other subjects keep their true answers), portability (two-hop answers
    of the edited world; NaN when no edit has one), all in [0, 1]; and fluency in bits."""
    prompts = [e.request.text for e in edits]
    new = [e.request.target_text for e in edits]
    old = [e.old for e in edits]
    para = [(p, e.request.target_text) for e in edits for p in e.paraphrases]
    neigh = [pa for e in edits for pa in e.neighbours]
    port = [pa for e in edits for pa in e.portability]
    score = (_logp(model, tok, prompts, new) > _logp(model, tok, prompts, old)).float().mean()
    return {
        "efficacy": _match_rate(model, tok, prompts, new),
        "efficacy_score": float(score),
        "paraphrase": _match_rate(model, tok, [p for p, _ in para], [a for _, a in para]),
        "neighbourhood": _match_rate(model, tok, [p for p, _ in neigh], [a for _, a in neigh]),
        "portability": _match_rate(model, tok, [p for p, _ in port], [a for _, a in port]),
        "fluency": fluency(model, tok, edits),
        "n_edits": len(edits),
    }
