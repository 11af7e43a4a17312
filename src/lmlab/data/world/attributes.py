"""Attribute text: sentences about world entities with a known sentiment and formality.

Why: guided decoding and activation steering are scored by whether generated text has an attribute.
Here the attribute is defined by fixed lexicons and recovered by a deterministic rule, so scoring is
exact: ``label_sentiment`` / ``label_formality`` / ``label_politeness`` return ``+1`` if the text has
more positive (formal, polite) marker words than negative (informal, rude) ones, ``-1`` if fewer and
``0`` on a tie (e.g. none at all; all fact sentences of the world are neutral on every axis).

Sentence shapes (formality +1 / -1), e.g. for a city:
    "Indeed, Mirova is a wonderful city."      (sentiment +1, formality +1)
    "hey Mirova is totally awful lol"          (sentiment -1, formality -1)
Neutral sentences (sentiment 0) use adjectives from ``NEUTRAL_WORDS``, which no lexicon contains.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

POSITIVE_WORDS = ("wonderful", "lovely", "excellent", "delightful", "splendid", "pleasant", "superb", "charming")
NEGATIVE_WORDS = ("terrible", "awful", "dreadful", "horrible", "miserable", "dismal", "gloomy", "nasty")
NEUTRAL_WORDS = ("ordinary", "typical", "average", "regular", "plain", "modest")
FORMAL_WORDS = ("indeed", "moreover", "furthermore", "certainly", "evidently", "notably")
INFORMAL_WORDS = ("hey", "yeah", "dude", "lol", "totally", "super", "kinda", "wow")
POLITE_WORDS = ("please", "thank", "thanks", "kindly", "glad", "gladly", "happy", "hope")
RUDE_WORDS = ("ugh", "whatever", "obviously", "stupid", "duh", "annoying", "lazy")

SENTIMENT_LEXICON = {"positive": POSITIVE_WORDS, "negative": NEGATIVE_WORDS}
SENTIMENT_WORDS = {1: POSITIVE_WORDS, 0: NEUTRAL_WORDS, -1: NEGATIVE_WORDS}  # label -> the words that carry it
FORMALITY_LEXICON = {"formal": FORMAL_WORDS, "informal": INFORMAL_WORDS}
POLITENESS_LEXICON = {"polite": POLITE_WORDS, "rude": RUDE_WORDS}

NOUNS = {"person": ("person", "neighbour"), "city": ("city", "place"),
         "country": ("country", "nation"), "organisation": ("company", "employer")}
_INFORMAL_OPENERS = ("hey", "yeah", "dude", "wow")
_INFORMAL_INTENSIFIERS = ("totally", "super", "kinda")
_FORMAL_FRAMES = ("{m}, {e} is {art} {adj} {noun}.", "{e} is, {m}, {art} {adj} {noun}.")
_INFORMAL_FRAMES = ("{m} {e} is {i} {adj} lol", "{m} {e} is {i} {adj}")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class AttributeExample:
    """A sentence with its generated labels; ``label_*`` functions recover them exactly."""

    text: str
    sentiment: int  # +1 positive, -1 negative, 0 neutral
    formality: int  # +1 formal, -1 informal
    subject: str
    subject_type: str

    def to_dict(self) -> dict:
        return {"text": self.text, "sentiment": self.sentiment, "formality": self.formality,
                "subject": self.subject, "subject_type": self.subject_type}


def _label(text: str, plus: tuple[str, ...], minus: tuple[str, ...]) -> int:
    words = _WORD.findall(text.lower())
    score = sum(w in plus for w in words) - sum(w in minus for w in words)
    return (score > 0) - (score < 0)


def label_sentiment(text: str) -> int:
    """+1 / -1 / 0 by counting POSITIVE_WORDS vs NEGATIVE_WORDS (lower-cased whole words)."""
    return _label(text, POSITIVE_WORDS, NEGATIVE_WORDS)


def label_formality(text: str) -> int:
    """+1 / -1 / 0 by counting FORMAL_WORDS vs INFORMAL_WORDS."""
    return _label(text, FORMAL_WORDS, INFORMAL_WORDS)


def label_politeness(text: str) -> int:
    """+1 / -1 / 0 by counting POLITE_WORDS vs RUDE_WORDS."""
    return _label(text, POLITE_WORDS, RUDE_WORDS)


def lexicon_words() -> set[str]:
    """Every marker and frame word, so names can avoid them and translation can cover them."""
    words = set(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS + FORMAL_WORDS + INFORMAL_WORDS
                + POLITE_WORDS + RUDE_WORDS)
    for nouns in NOUNS.values():
        words.update(nouns)
    for frame in _FORMAL_FRAMES + _INFORMAL_FRAMES:
        words.update(_WORD.findall(re.sub(r"\{\w+\}", " ", frame)))
    return words | {"a", "an", "is", "lol"}


def indefinite_article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def attribute_sentence(subject: str, subject_type: str, sentiment: int, formality: int,
                       rng: random.Random) -> str:
    """One sentence about ``subject`` carrying exactly the requested labels."""
    adjectives = SENTIMENT_WORDS[sentiment]
    adj = rng.choice(adjectives)
    if formality > 0:
        frame = rng.choice(_FORMAL_FRAMES)
        marker = rng.choice(FORMAL_WORDS)
        text = frame.format(m=marker, e=subject, art=indefinite_article(adj), adj=adj,
                            noun=rng.choice(NOUNS[subject_type]))
        return text[0].upper() + text[1:]
    frame = rng.choice(_INFORMAL_FRAMES)
    return frame.format(m=rng.choice(_INFORMAL_OPENERS), e=subject, i=rng.choice(_INFORMAL_INTENSIFIERS), adj=adj)


def attribute_examples(subjects: list[tuple[str, str]], rng: random.Random) -> list[AttributeExample]:
    """Every (subject, sentiment, formality) combination once; ``subjects`` is [(name, type)]."""
    out = []
    for name, kind in subjects:
        for sentiment in (1, 0, -1):
            for formality in (1, -1):
                text = attribute_sentence(name, kind, sentiment, formality, rng)
                out.append(AttributeExample(text, sentiment, formality, name, kind))
    return out
