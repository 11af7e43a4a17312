"""Sentence templates for every relation, split into training, held-out and two-hop sets.

Why: recall must be measured on the exact training phrasing, generalisation on paraphrases the model
never saw, and composition on two-hop questions whose phrasing is also new. All templates end with the
object (``... {o}``) so the prompt is simply the prefix; see :mod:`lmlab.data.world.schema` for the
leading-space answer convention.

Occupations all start with a consonant so "works as a {o}" never needs "an".

Held-out templates recombine words the training text uses elsewhere ("The nation that has {s} as its capital
is {o}"): a phrasing whose word occurs in no training text measures whether a model can ignore a token it never
met, not whether it generalises across phrasings. Until session 13, 13 of the 18 did use such a word ("draws a
salary from"); docs/claims.md (issue 11) has the figures under both sets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lmlab.data.world.schema import Relation, TwoHopRelation

MAX_TRAIN_TEMPLATES = 4
MAX_HELDOUT_TEMPLATES = 2

RELATIONS: tuple[Relation, ...] = (
    Relation(
        "born_in", "person", "city",
        ("{s} was born in {o}", "The birthplace of {s} is {o}", "{s} is a native of {o}",
         "{s} came into the world in {o}"),
        ("The city where {s} was born is {o}", "{s} was born in the city of {o}"),
        "Where was {s} born?",
    ),
    Relation(
        "lives_in", "person", "city",
        ("{s} lives in {o}", "The home of {s} is in {o}", "{s} is a resident of {o}", "{s} has a house in {o}"),
        ("The city where {s} lives is {o}", "{s} has a home in {o}"),
        "Where does {s} live?",
    ),
    Relation(
        "works_as", "person", "occupation",
        ("{s} works as a {o}", "The occupation of {s} is {o}", "{s} is employed as a {o}",
         "{s} earns a living as a {o}"),
        ("The occupation that {s} has is {o}", "{s} is a person employed as a {o}"),
        "What is the occupation of {s}?",
    ),
    Relation(
        "works_for", "person", "organisation",
        ("{s} works for {o}", "The employer of {s} is {o}", "{s} is employed by {o}", "{s} is on the staff of {o}"),
        ("The company that employs {s} is {o}", "{s} is a person employed by {o}"),
        "Who employs {s}?",
    ),
    Relation(
        "speaks", "person", "language",
        ("{s} speaks {o}", "The language of {s} is {o}", "{s} is fluent in {o}", "{s} talks in {o}"),
        ("The language that {s} speaks is {o}", "{s} is a person who speaks {o}"),
        "What language does {s} speak?",
    ),
    Relation(
        "city_in", "city", "country",
        ("{s} is a city in {o}", "{s} lies in {o}", "The city of {s} is in {o}", "{s} is located in {o}"),
        ("The country where {s} lies is {o}", "{s} is a city located in {o}"),
        "Which country is {s} in?",
    ),
    Relation(
        "capital_of", "city", "country",
        ("{s} is the capital of {o}", "{s} is the capital city of {o}", "{s} serves as the capital of {o}",
         "{s} is the seat of government of {o}"),
        ("{s} serves as the capital city of {o}", "The nation that has {s} as its capital is {o}"),
        "Which country has {s} as its capital?",
    ),
    Relation(
        "headquartered_in", "organisation", "city",
        ("{s} is headquartered in {o}", "The headquarters of {s} is in {o}", "{s} has its main office in {o}",
         "{s} is based in {o}"),
        ("The main office of {s} is in {o}", "The city where {s} is based is {o}"),
        "Where is {s} headquartered?",
    ),
    Relation(
        "official_language", "country", "language",
        ("{s} has the official language {o}", "The official language of {s} is {o}",
         "People in {s} officially speak {o}", "In {s} the state language is {o}"),
        ("The main language of {s} is {o}", "The state language of {s} is {o}"),
        "What is the official language of {s}?",
    ),
)

TWO_HOP_RELATIONS: tuple[TwoHopRelation, ...] = (
    TwoHopRelation("birth_country", ("born_in", "city_in"), "person", "country",
                   ("The country where {s} was born is {o}", "{s} was born in the country of {o}")),
    TwoHopRelation("home_country", ("lives_in", "city_in"), "person", "country",
                   ("The country where {s} lives is {o}", "{s} lives in the country of {o}")),
    TwoHopRelation("employer_city", ("works_for", "headquartered_in"), "person", "city",
                   ("The employer of {s} is based in {o}", "{s} works for a company based in {o}")),
    TwoHopRelation("city_language", ("city_in", "official_language"), "city", "language",
                   ("The official language of the country containing {s} is {o}",
                    "People in the country of {s} speak {o}")),
)

# Augmentation templates: two more training phrasings per relation in the same two shapes for every relation (a
# possessive, "{s}'s <noun> ...", and a relative clause, "The <noun> that/where {s} <verb> is {o}"), the statement
# counterpart of the augmentation question forms (questions.QUESTIONS[r].extra). Not in the world's corpus: a recipe
# adds them with the kind "facts_extra" (World.fact_extra_documents). Why: the references recall a fact under its
# four training templates but lose the relation under a new construction ("The city where X was born is" is
# continued by a company): each relation's training phrasings share one construction or two, and a fact stored
# from text that varies only that little is keyed on those exact words (Allen-Zhu & Li 2023, "Physics of Language
# Models 3.1": knowledge augmentation). They were written after the held-out templates were known, so
# tests/data/test_world_tasks.py holds them to the rules of the question forms: no held-out or two-hop phrasing in
# their text and no four-word span of one that the training templates do not already hold -- their head nouns and
# verbs ("place", "job", "firm", "tongue", "land") are not the held-out ones. They stay out of all_template_words,
# so the world's generated names are unchanged.
EXTRA_TEMPLATES: dict[str, tuple[str, str]] = {
    "born_in": ("{s}'s birthplace is {o}", "The place where {s} came into the world is {o}"),
    "lives_in": ("{s}'s home is in {o}", "The place where {s} has a house is {o}"),
    "works_as": ("{s}'s job is {o}", "The job that {s} holds is {o}"),
    "works_for": ("{s}'s employer is {o}", "The firm that {s} works for is {o}"),
    "speaks": ("{s}'s language is {o}", "The tongue that {s} is fluent in is {o}"),
    "city_in": ("{s}'s country is {o}", "The land where {s} is located is {o}"),
    "capital_of": ("{s}'s role is capital of {o}", "The country whose capital is {s} is {o}"),
    "headquartered_in": ("{s}'s headquarters is in {o}", "The place where {s} has its main office is {o}"),
    "official_language": ("{s}'s official language is {o}", "The tongue that people in {s} officially speak is {o}"),
}


RELATION_NAMES = tuple(relation.name for relation in RELATIONS)
_NAME_PATTERN = r"[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*"


def render(template: str, subject: str, obj: str) -> str:
    """The full sentence without its final period, e.g. ``"Zarek Vell was born in Mirova"``."""
    return template.replace("{s}", subject).replace("{o}", obj)


def prompt_of(template: str, subject: str) -> str:
    """The prefix before the object, no trailing space: ``"Zarek Vell was born in"``."""
    if not template.endswith(" {o}"):
        raise ValueError(f"template must end with ' {{o}}': {template!r}")
    return template[: -len(" {o}")].replace("{s}", subject)


def canonical_parts(template: str) -> list[str]:
    """The verb-phrase words of a ``"{s} <words> {o}"`` template, e.g. ``["was", "born", "in"]``."""
    if not (template.startswith("{s} ") and template.endswith(" {o}")):
        raise ValueError(f"canonical template must read '{{s}} ... {{o}}': {template!r}")
    return template[len("{s} "): -len(" {o}")].split()


def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching any rendering of ``template``'s prompt with capitalised names in the slot.

    Used to prove that a held-out or two-hop phrasing never occurs anywhere in training text.
    """
    head = prompt_of(template, "\x00")
    pieces = [re.escape(piece) for piece in head.split("\x00")]
    return re.compile(_NAME_PATTERN.join(pieces))


def template_words(templates: Iterable[str]) -> set[str]:
    """Lower-case vocabulary words of some templates (placeholders removed)."""
    words: set[str] = set()
    for template in templates:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]+", template.replace("{s}", " ").replace("{o}", " ")))
    return words


def all_template_words() -> set[str]:
    """Every word used by any relation, held-out, two-hop or question template."""
    texts: list[str] = []
    for relation in RELATIONS:
        texts += [*relation.train_templates, *relation.heldout_templates, relation.question]
    for relation in TWO_HOP_RELATIONS:
        texts += list(relation.templates)
    return template_words(texts)
