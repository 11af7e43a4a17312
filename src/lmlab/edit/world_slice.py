"""A slice of the world to unlearn: everything about one country, with its ground truth for the evaluation.

The slice is every fact whose subject or object is the country or one of its cities (``city_in``): the cities'
country, the country's capital and official language, the companies headquartered there, the people born or living
there. Forget text = those facts in every training template; the held-out templates are the paraphrase attack's
prompts (never seen in training); retain = the other facts' training probes. Anchored terms (for Who's Harry Potter)
map the country to another country and each of its cities to a city of another country -- the generic
counterparts the paper's step 2 asks for, chosen from the world itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmlab.errors import LmlabError


@dataclass
class WorldSlice:
    country: str
    facts: list  # world Facts in the slice
    forget_texts: list[str]  # every forget fact in every training template, "prompt answer."
    forget_probes: list  # Probes, training templates
    paraphrase_prompts: list[list[str]]  # per fact (in facts' order): held-out template prompts
    answers: list[str]  # per fact: " object"
    fact_prompts: list[str]  # per fact: the first training template's prompt
    retain_probes: list
    anchors: dict[str, str] = field(default_factory=dict)


def country_slice(world, country: str | None = None, n_retain: int = 200, seed: int = 0) -> WorldSlice:
    """The slice of ``country`` (default: the world's first country in sorted order)."""
    countries = sorted({f.object for f in world.facts if f.relation == "city_in"})
    if not countries:
        raise LmlabError("country_slice: the world has no city_in facts")
    country = countries[0] if country is None else country
    if country not in countries:
        raise LmlabError(f"country_slice: unknown country {country!r} (known: {', '.join(countries)})")
    cities = sorted(f.subject for f in world.facts if f.relation == "city_in" and f.object == country)
    names = {country, *cities}
    facts = [f for f in world.facts if f.subject in names or f.object in names]
    keys = {(f.subject, f.relation, f.object) for f in facts}

    def in_slice(p) -> bool:
        return (p.fact.subject, p.fact.relation, p.fact.object) in keys

    train = [p for p in world.probes("train") if in_slice(p)]
    heldout = [p for p in world.probes("heldout") if in_slice(p)]
    rng = random.Random(seed)
    others = [p for p in world.probes("train") if not in_slice(p)]
    retain = rng.sample(others, min(n_retain, len(others)))
    other_countries = [c for c in countries if c != country]
    other_cities = sorted(f.subject for f in world.facts if f.relation == "city_in" and f.object != country)
    anchors = {country: other_countries[0], **{c: other_cities[i % len(other_cities)] for i, c in enumerate(cities)}}

    def key(f):
        return (f.subject, f.relation, f.object)

    first = {}
    for p in train:
        first.setdefault(key(p.fact), p.prompt)
    return WorldSlice(country, facts, [p.prompt + p.answer + "." for p in train], train,
                      [[p.prompt for p in heldout if key(p.fact) == key(f)] for f in facts],
                      [" " + f.object for f in facts], [first[key(f)] for f in facts], retain, anchors)
