"""Question/answer text for every relation: training question forms and held-out ones.

Why: question answering on a held-out question form measures whether a model can *extract* a fact it
stored from declarative text, not merely complete a sentence it saw (Allen-Zhu & Li 2023, "Physics of
Language Models 3.1"). Each relation has training question forms (they appear in QA documents and chat
dialogues) and held-out forms (they never appear in any training text; tests/data/test_world.py proves it).
``QUESTIONS[r].train[0]`` is ``Relation.question`` (the form the preference pairs use).

``QUESTIONS[r].extra`` are four more training forms per relation, in the same four shapes for every relation
(the statement with ``which``/``what`` in the object's place; "Do you know ...?"; "Tell me ..."; a second
statement echo). They are *not* in the world's corpus (so every earlier recipe, file and record is unchanged):
a recipe adds them with the kind ``"qa_extra"`` (:meth:`World.qa_extra_documents`). Why: a model stores a fact
from declarative text but extracts it under a new question form only when its training questions vary
(Allen-Zhu & Li 2023: "knowledge augmentation"). With two forms per relation the world references keyed the
relation on exact phrasing: "What city is the birthplace of X?" got an occupation. They were written after the
held-out forms were known, so tests/data/test_world_tasks.py holds them to rules a form tailored to a held-out one
would break: no held-out form occurs in their text, and they add no four-word span of a held-out form that the
training statements and training forms do not already contain.

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
    extra: tuple[str, ...] = ()  # training-only augmentation forms, opt-in per recipe (see the module docstring)


QUESTIONS: dict[str, QuestionForms] = {
    "born_in": QuestionForms(("Where was {s} born?", "In which city was {s} born?"),
                             ("What city is the birthplace of {s}?",),
                             ("{s} was born in which city?", "Do you know where {s} was born?",
                              "Tell me the birthplace of {s}.", "{s} is a native of which city?")),
    "lives_in": QuestionForms(("Where does {s} live?", "In which city does {s} live?"),
                              ("What city is the home of {s}?",),
                              ("{s} lives in which city?", "Do you know where {s} lives?",
                               "Tell me where the home of {s} is.", "{s} is a resident of which city?")),
    "works_as": QuestionForms(("What is the occupation of {s}?", "What does {s} do for a living?"),
                              ("Which occupation does {s} have?",),
                              ("{s} is employed as what?", "Do you know what {s} does for a living?",
                               "Tell me the occupation of {s}.", "{s} earns a living as what?")),
    "works_for": QuestionForms(("Who employs {s}?", "Which company does {s} work for?"),
                               ("What company is {s} employed by?",),
                               ("{s} is employed by which company?", "Do you know who employs {s}?",
                                "Tell me the employer of {s}.", "{s} is on the staff of which company?")),
    "speaks": QuestionForms(("What language does {s} speak?", "Which language is {s} fluent in?"),
                            ("In what language does {s} talk?",),
                            ("{s} speaks which language?", "Do you know what language {s} speaks?",
                             "Tell me the language of {s}.", "{s} is fluent in which language?")),
    "city_in": QuestionForms(("Which country is {s} in?", "In which country is {s} located?"),
                             ("What country does {s} lie in?",),
                             ("{s} is a city in which country?", "Do you know where {s} is located?",
                              "Tell me the country that {s} is in.", "{s} is located in which country?")),
    "capital_of": QuestionForms(("Which country has {s} as its capital?", "Of which country is {s} the capital?"),
                                ("What country has its capital in {s}?",),
                                ("{s} is the capital of which country?",
                                 "Do you know which country has {s} as its capital?",
                                 "Tell me which country has the capital {s}.",
                                 "{s} serves as the capital of which country?")),
    "headquartered_in": QuestionForms(("Where is {s} headquartered?", "In which city is {s} based?"),
                                      ("What city has the headquarters of {s}?",),
                                      ("{s} is headquartered in which city?", "Do you know where {s} is based?",
                                       "Tell me where {s} has its main office.", "{s} is based in which city?")),
    "official_language": QuestionForms(("What is the official language of {s}?",
                                        "Which language do people in {s} officially speak?"),
                                       ("What language is official in {s}?",),
                                       ("{s} has which official language?",
                                        "Do you know the official language of {s}?",
                                        "Tell me the official language of {s}.",
                                        "People in {s} officially speak which language?")),
}

_NAME = r"[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*"


def qa_prompt(question: str, subject: str) -> str:
    """``"Question: Where was Zarek Vell born?\\nAnswer:"``"""
    return QA_FORMAT.format(q=question.replace("{s}", subject))


def qa_probes(facts: Iterable[Fact], split: str) -> list[Probe]:
    """One probe per fact and question form of ``split`` ("train", "heldout" or "extra"); id
    ``<relation>/qa_<split>/<i>``."""
    out = []
    for fact in facts:
        for i, question in enumerate(getattr(QUESTIONS[fact.relation], split)):
            out.append(Probe(qa_prompt(question, fact.subject), " " + fact.object, fact,
                             f"{fact.relation}/qa_{split}/{i}"))
    return out


def qa_documents(facts: Iterable[Fact], split: str = "train") -> list[str]:
    """Every fact under every ``split`` question form ("train" or "extra"): ``prompt + " " + object + "."``."""
    return [p.prompt + p.answer + "." for p in qa_probes(facts, split)]


def question_regex(question: str) -> re.Pattern[str]:
    """Matches ``question`` with any capitalised name in its slot (for the leak tests)."""
    return re.compile(_NAME.join(re.escape(piece) for piece in question.split("{s}")))


def question_words() -> set[str]:
    """Lower-case words of every question form and the QA format."""
    text = " ".join(q for forms in QUESTIONS.values() for q in (*forms.train, *forms.heldout, *forms.extra))
    text += " " + QA_FORMAT
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))
