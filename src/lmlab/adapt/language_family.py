"""A larger family of synthetic languages around the world's three, for language-similarity measures.

Why: the world ships three languages (base -> lang_a -> lang_b), which give only three language pairs -- too few
for a rank correlation.  Here each further language is one or two controlled changes away from a parent, so the
"true" distance between any two languages is known: the number of derivation steps on the tree path between
them.  The world's own languages keep their lexicons; lang_b is split into its two halves (the sound shift, then
verb-final order + Cyrillic script) so that its intermediate stage is a language too::

    base ─┬─ base_sov       (verb-final word order)
          ├─ base_mix       (half of the words relexified with lang_a's words)
          └─ lang_a         (every word relexified)
               ├─ lang_a_sov    (verb-final word order)
               └─ lang_a_shift  (sound shift p<->f t<->d k<->g s<->z)
                    └─ lang_b   (verb-final word order, Cyrillic script) -- the world's lang_b, same sentences

Edge weights: the number of entries in the child's ``derivation`` (so base -> lang_b is 1 + 1 + 2 = 4 steps).
"""

from __future__ import annotations

from lmlab.data.world.languages import SyntheticLanguage, render_fact
from lmlab.data.world.script import sound_shift
from lmlab.data.world.text import group_by_subject
from lmlab.errors import LmlabError

FAMILY_CODES = ("base", "base_sov", "base_mix", "lang_a", "lang_a_sov", "lang_a_shift", "lang_b")


def extended_languages(world) -> dict[str, SyntheticLanguage]:
    """code -> language for :data:`FAMILY_CODES`, built from ``world.languages`` (lexicons reused)."""
    langs = world.languages
    base, a, b = langs["base"], langs["lang_a"], langs["lang_b"]
    words = sorted(base.lexicon)
    mixed = {w: (a.lexicon[w] if i % 2 else w) for i, w in enumerate(words)}  # every other word relexified
    shifted = {w: sound_shift(a.lexicon[w]) for w in words}  # lang_b's words, still in Latin letters
    out = {
        "base": base,
        "base_sov": SyntheticLanguage("base_sov", "base", "SOV", "latin", ("word_order SOV",), dict(base.lexicon)),
        "base_mix": SyntheticLanguage("base_mix", "base", "SVO", "latin", ("relexify half",), mixed),
        "lang_a": a,
        "lang_a_sov": SyntheticLanguage("lang_a_sov", "lang_a", "SOV", "latin", ("word_order SOV",),
                                        dict(a.lexicon)),
        "lang_a_shift": SyntheticLanguage("lang_a_shift", "lang_a", "SVO", "latin", (b.derivation[0],), shifted),
        "lang_b": SyntheticLanguage("lang_b", "lang_a_shift", "SOV", "cyrillic", tuple(b.derivation[1:]),
                                    dict(b.lexicon)),
    }
    return out


def tree_distance(languages: dict[str, SyntheticLanguage], a: str, b: str) -> int:
    """Derivation steps on the tree path between ``a`` and ``b`` (each edge weighs len(child.derivation))."""
    for code in (a, b):
        if code not in languages:
            raise LmlabError(f"tree_distance: unknown language {code!r}; known: {', '.join(languages)}")

    def ancestors(code: str) -> dict[str, int]:  # ancestor -> steps from ``code`` up to it
        out, steps = {code: 0}, 0
        while languages[code].parent is not None:
            steps += max(1, len(languages[code].derivation))
            code = languages[code].parent
            if code not in languages:
                raise LmlabError(f"tree_distance: parent {code!r} is not among the languages")
            out[code] = steps
        return out

    up_a, up_b = ancestors(a), ancestors(b)
    common = [c for c in up_a if c in up_b]
    if not common:
        raise LmlabError(f"tree_distance: {a!r} and {b!r} have no common ancestor")
    return min(up_a[c] + up_b[c] for c in common)


def parallel_corpus(world, languages: dict[str, SyntheticLanguage]) -> dict[str, list[str]]:
    """code -> the world's facts as sentences in that language, one per fact, in the same order (multi-parallel)."""
    facts = world.facts
    return {code: [render_fact(lang, f, world.relations[f.relation]) for f in facts]
            for code, lang in languages.items()}


def language_documents(world, lang: SyntheticLanguage) -> list[str]:
    """One paragraph per subject (its facts' sentences in ``lang``), like ``World.language_documents``."""
    return [" ".join(render_fact(lang, f, world.relations[f.relation]) for f in facts)
            for facts in group_by_subject(world.facts).values()]
