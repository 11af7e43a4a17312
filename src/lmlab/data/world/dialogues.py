"""Chat-format dialogues: a user asks about a fact; the assistant answers plainly, politely or rudely.

Why: preference optimisation, reward models and politeness steering need a dialogue format the model
knows and replies whose politeness is known exactly. Replies reuse the preference pairs' frames
(:data:`preferences.POLITE_FRAMES` / :data:`preferences.RUDE_FRAMES`) around the canonical fact sentence,
so ``politeness == label_politeness(reply)`` (+1 polite, -1 rude, 0 plain) holds by construction.

A polite or rude reply is asked for by a system instruction (:data:`STYLE_INSTRUCTIONS`); a plain reply has
no system turn. Attribute requests ("Write a positive sentence about Mirova.") are dialogues too, answered
with an attribute sentence carrying the requested label. Dialogues use training question forms only; the
text is rendered with a chat template (ChatML, :data:`lmlab.core.chat_template.DEFAULT_CHAT_TEMPLATE`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lmlab.data.world.attributes import label_politeness
from lmlab.data.world.preferences import POLITE_FRAMES, RUDE_FRAMES
from lmlab.data.world.questions import QUESTIONS
from lmlab.data.world.schema import Fact, Relation
from lmlab.data.world.templates import render

STYLES = ("plain", "polite", "rude")
STYLE_INSTRUCTIONS = {"polite": "Answer in a courteous way.", "rude": "Answer in an impolite way."}
ATTRIBUTE_REQUEST = "Write a {value} sentence about {e}."


@dataclass(frozen=True)
class Dialogue:
    """``messages`` (role/content dicts), the rendered ``text`` and the reply's known labels."""

    messages: tuple[dict, ...]
    text: str
    kind: str  # "fact" or "attribute"
    style: str  # fact dialogues: a STYLES entry; attribute dialogues: "<axis>:<value>"
    politeness: int
    fact: Fact | None = None

    def to_dict(self) -> dict:
        out = {"messages": [dict(m) for m in self.messages], "text": self.text, "kind": self.kind,
               "style": self.style, "politeness": self.politeness}
        if self.fact is not None:
            out["fact"] = self.fact.to_dict()
        return out


def render_messages(messages: list[dict], add_generation_prompt: bool = False) -> str:
    from lmlab.core.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template

    return render_chat_template(DEFAULT_CHAT_TEMPLATE, messages, add_generation_prompt=add_generation_prompt)


def fact_request(fact: Fact, question: str, style: str) -> list[dict]:
    """The messages before the assistant's reply (system instruction for polite/rude, then the question)."""
    return _instructed({"role": "user", "content": question.replace("{s}", fact.subject)}, style)


def _instructed(user: dict, style: str) -> list[dict]:
    """``user`` preceded by ``style``'s system instruction (none for plain)."""
    if style == "plain":
        return [user]
    return [{"role": "system", "content": STYLE_INSTRUCTIONS[style]}, user]


def styled_reply(fact: Fact, relation: Relation, style: str, rng: random.Random) -> str:
    answer = render(relation.train_templates[0], fact.subject, fact.object) + "."
    if style == "plain":
        return answer
    return rng.choice(POLITE_FRAMES if style == "polite" else RUDE_FRAMES).format(a=answer)


def fact_dialogues(facts: list[Fact], relations: dict[str, Relation], rng: random.Random) -> list[Dialogue]:
    """Every fact in every style, the question drawn from the relation's training forms."""
    out = []
    for fact in facts:
        for style in STYLES:
            question = rng.choice(QUESTIONS[fact.relation].train)
            out.append(_fact_dialogue(fact, fact_request(fact, question, style), style, relations, rng))
    return out


def _fact_dialogue(fact: Fact, request: list[dict], style: str, relations: dict[str, Relation],
                   rng: random.Random) -> Dialogue:
    """``request`` answered by the fact in ``style`` (the reply's frame drawn from ``rng``)."""
    reply = styled_reply(fact, relations[fact.relation], style, rng)
    messages = [*request, {"role": "assistant", "content": reply}]
    return Dialogue(tuple(messages), render_messages(messages), "fact", style, label_politeness(reply), fact)


def style_contrasts(originals: list[Dialogue], relations: dict[str, Relation], rng: random.Random) -> list[Dialogue]:
    """For every fact dialogue, the same question asked in each style the fact has no dialogue for with that
    question (the system instruction changed, the reply restyled): with them, every (fact, question) pair of
    the originals is answered plainly, politely and rudely.

    Why: :func:`fact_dialogues` draws each style's question on its own, so a fact's polite and rude requests
    mostly use different question forms and a model can tell the style from (subject, question) without reading
    the system instruction; given a held-out question it then answers both instructions alike (a fresh
    ``world-llama-2m-1k-v5``-style run: 53.9% system-prompt politeness, docs/claims.md, issue 11, session 18).
    """
    facts = [d for d in originals if d.kind == "fact"]
    asked = {(d.fact, d.messages[-2]["content"], d.style) for d in facts}
    out = []
    for original in facts:
        user = dict(original.messages[-2])
        for style in STYLES:
            if (original.fact, user["content"], style) in asked:
                continue
            asked.add((original.fact, user["content"], style))
            out.append(_fact_dialogue(original.fact, _instructed(user, style), style, relations, rng))
    return out


def attribute_request(subject: str, value: str) -> list[dict]:
    return [{"role": "user", "content": ATTRIBUTE_REQUEST.format(value=value, e=subject)}]


def attribute_dialogue(subject: str, axis: str, value: str, sentence: str) -> Dialogue:
    messages = [*attribute_request(subject, value), {"role": "assistant", "content": sentence}]
    return Dialogue(tuple(messages), render_messages(messages), "attribute", f"{axis}:{value}",
                    label_politeness(sentence))


def dialogue_words() -> set[str]:
    text = " ".join([*STYLE_INSTRUCTIONS.values(), ATTRIBUTE_REQUEST, "user assistant system"])
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))
