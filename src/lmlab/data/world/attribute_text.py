"""Attribute text for sentiment, formality and politeness, with and without control codes.

Why: class-conditional language models (CTRL, Keskar et al. 2019; GeDi, Krause et al. 2021) are trained
on text prefixed by a control code naming its class, and attribute steering needs unprefixed text whose
label is known. Each :class:`AttributeText` is one sentence about a world subject with one axis's label;
``prefixed`` is ``"<code> " + text``. Labels are exactly what :func:`attributes.label_sentiment`,
:func:`attributes.label_formality` and :func:`attributes.label_politeness` return for the text.

Sentiment and formality sentences come from :func:`attributes.attribute_sentence` (one per sentiment x
formality); politeness sentences are neutral-adjective statements wrapped in polite or rude words (no
sentiment or formality markers).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lmlab.data.world.attributes import (
    NEUTRAL_WORDS,
    NOUNS,
    SENTIMENT_WORDS,
    attribute_sentence,
    indefinite_article,
    label_formality,
    label_politeness,
    label_sentiment,
)

# axis -> label -> (value word, control code)
AXES: dict[str, dict[int, tuple[str, str]]] = {
    "sentiment": {1: ("positive", "<positive>"), 0: ("neutral", "<neutral>"), -1: ("negative", "<negative>")},
    "formality": {1: ("formal", "<formal>"), -1: ("informal", "<informal>")},
    "politeness": {1: ("polite", "<polite>"), -1: ("rude", "<rude>")},
}
LABELLERS = {"sentiment": label_sentiment, "formality": label_formality, "politeness": label_politeness}
_POLITE_FRAMES = ("Please note that {e} is {art} {adj} {noun}, thank you.",
                  "I am glad to say that {e} is {art} {adj} {noun}.", "Kindly note that {e} is {art} {adj} {noun}.")
_RUDE_FRAMES = ("Ugh, {e} is {art} {adj} {noun}, whatever.", "Duh, {e} is obviously {art} {adj} {noun}.",
                "Whatever, {e} is {art} {adj} {noun}, stupid.")


@dataclass(frozen=True)
class AttributeText:
    text: str
    axis: str
    label: int
    subject: str
    subject_type: str

    @property
    def value(self) -> str:
        return AXES[self.axis][self.label][0]

    @property
    def code(self) -> str:
        return AXES[self.axis][self.label][1]

    @property
    def prefixed(self) -> str:
        return f"{self.code} {self.text}"

    def to_dict(self) -> dict:
        return {"text": self.text, "prefixed": self.prefixed, "axis": self.axis, "label": self.label,
                "value": self.value, "code": self.code, "subject": self.subject, "subject_type": self.subject_type}


def politeness_sentence(subject: str, subject_type: str, politeness: int, rng: random.Random) -> str:
    adj = rng.choice(NEUTRAL_WORDS)
    frame = rng.choice(_POLITE_FRAMES if politeness > 0 else _RUDE_FRAMES)
    return frame.format(e=subject, art="an" if adj[0] in "aeiou" else "a", adj=adj,
                        noun=rng.choice(NOUNS[subject_type]))


def attribute_texts(subjects: list[tuple[str, str]], n_variants: int, rng: random.Random) -> list[AttributeText]:
    """For each subject and variant: 6 sentiment x formality sentences (each gives a sentiment and a
    formality record) and one polite and one rude sentence."""
    out = []
    for variant in range(n_variants):
        for name, kind in subjects:
            for sentiment in (1, 0, -1):
                for formality in (1, -1):
                    text = attribute_sentence(name, kind, sentiment, formality, rng)
                    out.append(AttributeText(text, "sentiment", sentiment, name, kind))
                    out.append(AttributeText(text, "formality", formality, name, kind))
            for politeness in (1, -1):
                out.append(AttributeText(politeness_sentence(name, kind, politeness, rng), "politeness",
                                         politeness, name, kind))
    return out


_SENTIMENT_WORD = re.compile(r"\b(?:(an?) )?(" + "|".join(w for ws in SENTIMENT_WORDS.values() for w in ws) + r")\b")


def sentiment_contrasts(items: list[AttributeText], rng: random.Random) -> list[AttributeText]:
    """For every sentiment text, the same sentence with its sentiment word swapped for a word of each other
    label (its article fixed): minimal pairs that differ only in the word the control code decides.

    Why: a subject's sentences are few and each opening (subject, marker, frame) almost always belongs to one
    of them, so a model trained on them predicts the sentiment word from the opening and never needs the code:
    ``world-llama-2m-1k`` gives the same word after ``<positive>`` as after ``<negative>`` (docs/claims.md,
    issue 11, session 14). With the contrasts, only the code tells which word follows an opening -- the
    counterfactual data augmentation of Lu et al. (2020) and Zmigrod et al. (2019), applied to a label.
    """
    out = []
    for item in items:
        if item.axis != "sentiment":
            continue
        for label in (1, 0, -1):
            if label != item.label:
                word = rng.choice(SENTIMENT_WORDS[label])
                text = _SENTIMENT_WORD.sub(lambda m: (f"{indefinite_article(word)} " if m.group(1) else "") + word,
                                           item.text, count=1)
                out.append(AttributeText(text, "sentiment", label, item.subject, item.subject_type))
    return out


def attribute_text_words() -> set[str]:
    text = " ".join(_POLITE_FRAMES + _RUDE_FRAMES) + " " + " ".join(v for a in AXES.values() for v, _ in a.values())
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))
