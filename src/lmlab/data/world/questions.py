"""Question/answer text for every relation: training question forms and held-out ones.

Why: question answering on a held-out question form measures whether a model can *extract* a fact it
stored from declarative text, not merely complete a sentence it saw (Allen-Zhu & Li 2023, "Physics of
Language Models 3.1"). Each relation has training question forms (they appear in QA documents and chat
dialogues) and held-out forms (they never appear in any training text; tests/data/test_world.py proves it).
``QUESTIONS[r].train[0]`` is ``Relation.question`` (the form the preference pairs use).

QA format (the preference pairs' format too): prompt ``"Question: Where was Zarek Vell born?\\nAnswer:"``,
answer ``" Mirova"``; in QA documents the answer is followed by ``"."``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lmlab.data.world.schema import Fact, Probe

QA_FORMAT = "Question: {q}\nAnswer:"


@dataclass(frozen=True)
class QuestionForms:
    train: tuple[str, ...]
    heldout: tuple[str, ...]


QUESTIONS: dict[str, QuestionForms] = {
    "born_in": QuestionForms(("Where was {s} born?", "In which city was {s} born?"),
                             ("What city is the birthplace of {s}?",)),
    "lives_in": QuestionForms(("Where does {s} live?", "In which city does {s} live?"),
                              ("What city is the home of {s}?",)),
    "works_as": QuestionForms(("What is the occupation of {s}?", "What does {s} do for a living?"),
                              ("Which occupation does {s} have?",)),
    "works_for": QuestionForms(("Who employs {s}?", "Which company does {s} work for?"),
                               ("What company is {s} employed by?",)),
    "speaks": QuestionForms(("What language does {s} speak?", "Which language is {s} fluent in?"),
                            ("In what language does {s} talk?",)),
    "city_in": QuestionForms(("Which country is {s} in?", "In which country is {s} located?"),
                             ("What country does {s} lie in?",)),
    "capital_of": QuestionForms(("Which country has {s} as its capital?", "Of which country is {s} the capital?"),
                                ("What country has its capital in {s}?",)),
    "headquartered_in": QuestionForms(("Where is {s} headquartered?", "In which city is {s} based?"),
                                      ("What city has the headquarters of {s}?",)),
    "official_language": QuestionForms(("What is the official language of {s}?",
                                        "Which language do people in {s} officially speak?"),
                                       ("What language is official in {s}?",)),
}

_NAME = r"[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*"


def qa_prompt(question: str, subject: str) -> str:
    """``"Question: Where was Zarek Vell born?\\nAnswer:"``"""
    return QA_FORMAT.format(q=question.replace("{s}", subject))


def qa_probes(facts: Iterable[Fact], split: str) -> list[Probe]:
    """One probe per fact and question form of ``split`` ("train"/"heldout"); id ``<relation>/qa_<split>/<i>``."""
    out = []
    for fact in facts:
        forms = QUESTIONS[fact.relation]
        for i, question in enumerate(forms.train if split == "train" else forms.heldout):
            out.append(Probe(qa_prompt(question, fact.subject), " " + fact.object, fact,
                             f"{fact.relation}/qa_{split}/{i}"))
    return out


def qa_documents(facts: Iterable[Fact]) -> list[str]:
    """Every fact under every training question form: ``prompt + " " + object + "."``."""
    return [p.prompt + p.answer + "." for p in qa_probes(facts, "train")]


def question_regex(question: str) -> re.Pattern[str]:
    """Matches ``question`` with any capitalised name in its slot (for the leak tests)."""
    return re.compile(_NAME.join(re.escape(piece) for piece in question.split("{s}")))


def question_words() -> set[str]:
    """Lower-case words of every question form and the QA format."""
    text = " ".join(q for forms in QUESTIONS.values() for q in (*forms.train, *forms.heldout)) + " " + QA_FORMAT
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))
