"""Render facts as training documents and as recall probes.

Why: the training text and the probes must agree exactly: every fact is written once under every
training template (so recall on "train" probes measures memorisation), while held-out and two-hop
phrasings never occur in training text (so those probes measure generalisation and composition).

Training document format: one biography paragraph per (subject, k) for k < n_train_templates; the
paragraph holds every fact about the subject, one sentence each, fact j using training template
``(k + j) mod n_train_templates``, sentences in a seeded random order, joined by single spaces.
Each sentence is ``render(template, subject, object) + "."``.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmlab.data.world.rng import rng_for
from lmlab.data.world.schema import Fact, Probe, Relation, TwoHopRelation
from lmlab.data.world.templates import EXTRA_TEMPLATES, prompt_of, render, template_regex


def sentence(template: str, fact: Fact) -> str:
    """``"Zarek Vell was born in Mirova."``"""
    return render(template, fact.subject, fact.object) + "."


def group_by_subject(facts: Iterable[Fact]) -> dict[str, list[Fact]]:
    """subject -> its facts, subjects in order of first appearance (relation order inside)."""
    groups: dict[str, list[Fact]] = {}
    for fact in facts:
        groups.setdefault(fact.subject, []).append(fact)
    return groups


def _paragraphs(facts: Iterable[Fact], templates: dict[str, tuple[str, ...]], seed: int, subject_order: list[str],
                stream: str) -> list[str]:
    """One paragraph per (subject, k) for k < n (the fewest templates of any relation): fact j under template
    ``(k + j) mod n``, sentences shuffled by ``rng_for(seed, stream, subject, k)``."""
    groups = group_by_subject(facts)
    n = min(len(t) for t in templates.values())
    docs = []
    for subject in subject_order:
        subject_facts = groups.get(subject, [])
        for k in range(n if subject_facts else 0):
            sentences = [sentence(templates[f.relation][(k + j) % n], f) for j, f in enumerate(subject_facts)]
            rng_for(seed, stream, subject, k).shuffle(sentences)
            docs.append(" ".join(sentences))
    return docs


def biography_documents(facts: Iterable[Fact], relations: dict[str, Relation], seed: int,
                        subject_order: list[str]) -> list[str]:
    """The fact documents (see module doc); deterministic for a given seed."""
    templates = {name: r.train_templates for name, r in relations.items()}
    return _paragraphs(facts, templates, seed, subject_order, "documents")


def extra_fact_documents(facts: Iterable[Fact], seed: int, subject_order: list[str]) -> list[str]:
    """Biography paragraphs like :func:`biography_documents` under the augmentation templates
    (:data:`~lmlab.data.world.templates.EXTRA_TEMPLATES`): every fact is stated once under each."""
    return _paragraphs(facts, EXTRA_TEMPLATES, seed, subject_order, "extra documents")


def probes(facts: Iterable[Fact], relations: dict[str, Relation], split: str) -> list[Probe]:
    """One probe per fact and template of ``split`` ("train" or "heldout"), fact-major order."""
    out = []
    for fact in facts:
        relation = relations[fact.relation]
        templates = relation.train_templates if split == "train" else relation.heldout_templates
        for i, template in enumerate(templates):
            out.append(Probe(prompt_of(template, fact.subject), " " + fact.object, fact,
                             f"{relation.name}/{split}/{i}"))
    return out


def two_hop_probes(two_hops: Iterable[TwoHopRelation], subjects: dict[str, list[str]],
                   table: dict[tuple[str, str], str]) -> list[Probe]:
    """Probes whose answer is ``r2(r1(subject))``; ``table`` maps (subject, relation) -> object."""
    out = []
    for relation in two_hops:
        first, second = relation.path
        for subject in subjects[relation.subject_type]:
            middle = table.get((subject, first))
            if middle is None or (middle, second) not in table:
                continue
            answer = table[(middle, second)]
            hops = (Fact(subject, first, middle), Fact(middle, second, answer))
            composed = Fact(subject, relation.name, answer)
            for i, template in enumerate(relation.templates):
                out.append(Probe(prompt_of(template, subject), " " + answer, composed,
                                 f"{relation.name}/two_hop/{i}", hops))
    return out


def find_template_leaks(templates: Iterable[str], text: str) -> list[str]:
    """The templates whose prompt (with any capitalised name as subject) occurs somewhere in ``text``.

    An empty list proves that held-out / two-hop phrasings are absent from the training text.
    """
    return [t for t in templates if template_regex(t).search(text)]
