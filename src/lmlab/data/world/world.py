"""``World``: the generated entities and facts, and every text view of them.

Why: one object owns the ground truth (``facts``, ``lookup``) and derives every dataset from it
(training text, probes, attribute text, preference pairs, long-context tasks, parallel text, bias
tables), so all views agree by construction. Everything is deterministic in ``config`` (seed
included); expensive views are computed on first use and cached.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from lmlab.data.world import attributes as attr
from lmlab.data.world import dialogues, editing, longcontext, preferences, questions, text
from lmlab.data.world.attribute_text import AttributeText, attribute_texts, sentiment_contrasts
from lmlab.data.world.bias import BIAS_TEMPLATES, counterfactual_pairs, measure_association
from lmlab.data.world.config import OCCUPATIONS, WorldConfig
from lmlab.data.world.entities import Entities, build_entities, first_name_genders
from lmlab.data.world.facts import build_facts
from lmlab.data.world.languages import (
    LANGUAGE_CODES,
    SyntheticLanguage,
    build_languages,
    family_tree,
    render_fact,
    translate_text,
    translate_tokens,
)
from lmlab.data.world.names import ORGANISATION_SUFFIXES, NameGenerator
from lmlab.data.world.rng import rng_for
from lmlab.data.world.schema import ENTITY_TYPES, Entity, Fact, Probe, Relation, TwoHopRelation
from lmlab.data.world.split import content_split
from lmlab.data.world.templates import RELATIONS, TWO_HOP_RELATIONS, all_template_words, template_words
from lmlab.data.world.writer import write_world
from lmlab.errors import LmlabError

SUBJECT_TYPES = ("person", "city", "country", "organisation")
DOCUMENT_EXTRAS = ("attributes", "lang_a", "lang_b")
LONG_CONTEXT_WORDS = ("the", "code", "of", "is", "what", "secret", "number")
CORPUS_KINDS = ("facts", "qa", "dialogues", "attributes")
_MISSING = object()
# Cached views that do not depend on the facts, so an edited world may keep them (see World.apply_edit).
_FACT_INDEPENDENT_CACHES = ("languages", "_name_parts", "_attribute_examples", "_attribute_texts")


@dataclass(frozen=True)
class CorpusDocument:
    """One training text of :meth:`World.corpus`; ``split`` is decided by the text (see :mod:`split`)."""

    text: str
    kind: str
    split: str

    def to_dict(self) -> dict:
        return {"text": self.text, "kind": self.kind, "split": self.split}


def world_vocabulary() -> list[str]:
    """Every lower-case word any world text uses outside entity names (sorted)."""
    bias = [t.replace("{name}", " ").replace("{occupation}", " ") for t in BIAS_TEMPLATES]
    words = (all_template_words() | attr.lexicon_words() | preferences.preference_words()
             | set(LONG_CONTEXT_WORDS) | set(OCCUPATIONS) | template_words(bias))
    return sorted(words)


class World:
    """A generated world. Build with :func:`build_world`; treat every attribute as read-only."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        vocabulary = world_vocabulary()
        self.vocabulary: tuple[str, ...] = tuple(vocabulary)
        self.entities: Entities
        self.entities, self._names = build_entities(config, [*vocabulary, *ORGANISATION_SUFFIXES])
        self.facts: tuple[Fact, ...]
        self.facts, self.occupation_gender = build_facts(config, self.entities)
        self.relations: dict[str, Relation] = {
            r.name: Relation(r.name, r.subject_type, r.object_type, r.train_templates[: config.n_train_templates],
                             r.heldout_templates[: config.n_heldout_templates], r.question)
            for r in RELATIONS
        }
        self.two_hop_relations: dict[str, TwoHopRelation] = {r.name: r for r in TWO_HOP_RELATIONS}
        self._table = {(f.subject, f.relation): f.object for f in self.facts}
        self._by_name = {e.name: e for group in self.entities.values() for e in group}
        self.edits: tuple[Fact, ...] = ()  # counterfactual edits applied to the generated facts, in order

    # ---- ground truth ----------------------------------------------------------------------
    def entity(self, name: str) -> Entity:
        if name not in self._by_name:
            raise LmlabError(f"entity: no entity named {name!r} in this world")
        return self._by_name[name]

    def names(self, entity_type: str) -> list[str]:
        if entity_type not in ENTITY_TYPES:
            raise LmlabError(f"entity_type must be one of {', '.join(ENTITY_TYPES)}, got {entity_type!r}")
        return [e.name for e in self.entities[entity_type]]

    def lookup(self, subject: str, relation: str, default: object = _MISSING) -> str:
        """The object of ``(subject, relation)``; raises LmlabError if there is no such fact (unless
        ``default`` is given). E.g. ``capital_of`` exists only for capital cities."""
        if relation not in self.relations:
            raise LmlabError(f"relation must be one of {', '.join(self.relations)}, got {relation!r}")
        if (subject, relation) not in self._table:
            if default is not _MISSING:
                return default  # type: ignore[return-value]
            raise LmlabError(f"subject: no {relation} fact about {subject!r} in this world")
        return self._table[(subject, relation)]

    def compose(self, subject: str, path: Sequence[str]) -> str:
        """Follow relations in order: ``compose(s, ["born_in", "city_in"])`` is the birth country."""
        for relation in path:
            subject = self.lookup(subject, relation)
        return subject

    def facts_about(self, subject: str) -> list[Fact]:
        return [f for f in self.facts if f.subject == subject]

    def apply_edit(self, subject: str, relation: str, new_object: str) -> World:
        """A new world where ``(subject, relation)`` is ``new_object``; ``self`` is unchanged.

        Every view derived from the facts (documents, probes, two-hop answers, QA, dialogues, edit
        requests, bias tables) is recomputed from the edited facts on use, so a two-hop answer whose path
        goes through the edited fact follows the edit. The edit is appended to ``edits``.
        """
        if relation not in self.relations:
            raise LmlabError(f"edit: relation must be one of {', '.join(self.relations)}, got {relation!r}")
        if (subject, relation) not in self._table:
            raise LmlabError(f"edit: no {relation} fact about {subject!r} in this world (nothing to edit)")
        object_type = self.relations[relation].object_type
        if new_object not in self._by_name or self._by_name[new_object].type != object_type:
            raise LmlabError(f"edit: new_object {new_object!r} is not a {object_type} of this world")
        if self._table[(subject, relation)] == new_object:
            raise LmlabError(f"edit: {subject!r} {relation} is already {new_object!r}")
        edited = copy.copy(self)
        edited.__dict__ = {k: v for k, v in self.__dict__.items()
                           if k not in type(self).__dict__ or k in _FACT_INDEPENDENT_CACHES}
        edited.facts = tuple(Fact(f.subject, f.relation, new_object) if (f.subject, f.relation) == (subject, relation)
                             else f for f in self.facts)
        edited._table = {(f.subject, f.relation): f.object for f in edited.facts}
        edited.edits = (*self.edits, Fact(subject, relation, new_object))
        return edited

    def two_hop_facts(self) -> list[Fact]:
        """Every composed fact (one per two-hop relation and subject with a defined path)."""
        seen, out = set(), []
        for probe in self.two_hop_probes():
            if probe.fact not in seen:
                seen.add(probe.fact)
                out.append(probe.fact)
        return out

    # ---- fact text ---------------------------------------------------------------------------
    @property
    def _subject_order(self) -> list[str]:
        return [e.name for kind in SUBJECT_TYPES for e in self.entities[kind]]

    @cached_property
    def _fact_documents(self) -> tuple[str, ...]:
        return tuple(text.biography_documents(self.facts, self.relations, self.config.seed, self._subject_order))

    def fact_extra_documents(self, split: str | None = "train") -> list[str]:
        """Fact biographies under the augmentation templates (``templates.EXTRA_TEMPLATES``), which are not part of
        :meth:`corpus`; a recipe adds them with the kind ``"facts_extra"``. ``split`` selects by the same content
        split as the corpus (None: all)."""
        docs = text.extra_fact_documents(self.facts, self.config.seed, self._subject_order)
        return [d for d in docs if self._on_side(d, split)]

    def training_documents(self, extras: Sequence[str] = ()) -> list[str]:
        """Fact biographies (see :mod:`text`), then any ``extras`` in the order given:
        ``"attributes"`` (one paragraph of attribute sentences per subject), ``"lang_a"``/``"lang_b"``
        (the facts as parallel-sentence paragraphs in that language). Held-out and two-hop phrasings
        never occur."""
        for extra in extras:
            if extra not in DOCUMENT_EXTRAS:
                raise LmlabError(f"extras must be drawn from {', '.join(DOCUMENT_EXTRAS)}, got {extra!r}")
        docs = list(self._fact_documents)
        for extra in extras:
            docs += self._attribute_documents() if extra == "attributes" else self.language_documents(extra)
        return docs

    def probes(self, split: str) -> list[Probe]:
        """``split`` "train": every fact under every training template; "heldout": held-out templates."""
        if split not in ("train", "heldout"):
            raise LmlabError(f"split must be 'train' or 'heldout', got {split!r}")
        return text.probes(self.facts, self.relations, split)

    def two_hop_probes(self) -> list[Probe]:
        subjects = {kind: self.names(kind) for kind in SUBJECT_TYPES}
        return text.two_hop_probes(self.two_hop_relations.values(), subjects, self._table)

    # ---- questions, dialogues, attribute text, edits -----------------------------------------
    def qa_probes(self, split: str) -> list[Probe]:
        """``split`` "train": every fact under every training question form; "heldout": held-out forms;
        "extra": the augmentation forms only some recipes train on (see :mod:`questions`)."""
        if split not in ("train", "heldout", "extra"):
            raise LmlabError(f"split must be 'train', 'heldout' or 'extra', got {split!r}")
        return questions.qa_probes(self.facts, split)

    def qa_documents(self) -> list[str]:
        return questions.qa_documents(self.facts)

    def qa_extra_documents(self, split: str | None = "train") -> list[str]:
        """QA documents under the augmentation question forms (``QUESTIONS[r].extra``), which are not part of
        :meth:`corpus`; a recipe adds them with the kind ``"qa_extra"``. ``split`` selects by the same content
        split as the corpus (None: all)."""
        return [t for t in questions.qa_documents(self.facts, "extra") if self._on_side(t, split)]

    @cached_property
    def _dialogues(self) -> tuple[dialogues.Dialogue, ...]:
        rng = rng_for(self.config.seed, "dialogues")
        out = dialogues.fact_dialogues(list(self.facts), self.relations, rng)
        for item in self._attribute_texts:
            out.append(dialogues.attribute_dialogue(item.subject, item.axis, item.value, item.text))
        return tuple(out)

    def dialogues(self) -> list[dialogues.Dialogue]:
        """Fact dialogues (every fact x plain/polite/rude) then attribute-request dialogues (see :mod:`dialogues`)."""
        return list(self._dialogues)

    @cached_property
    def _attribute_texts(self) -> tuple[AttributeText, ...]:
        subjects = [(e.name, kind) for kind in SUBJECT_TYPES for e in self.entities[kind]]
        return tuple(attribute_texts(subjects, self.config.n_attribute_variants,
                                     rng_for(self.config.seed, "attribute_text")))

    def attribute_texts(self) -> list[AttributeText]:
        """Sentiment, formality and politeness sentences with their control codes (see :mod:`attribute_text`)."""
        return list(self._attribute_texts)

    def sentiment_contrast_texts(self, split: str | None = "train") -> list[AttributeText]:
        """Two counterfactual copies of every sentiment text, its sentiment word swapped for each other label
        (:func:`attribute_text.sentiment_contrasts`). Not part of :meth:`corpus`: a recipe adds their prefixed
        form with the kind ``"sentiment_contrasts"``. ``split`` keeps those whose prefixed text falls on that
        side of the corpus's content split (None: all), so none equals a validation text."""
        items = sentiment_contrasts(list(self._attribute_texts), rng_for(self.config.seed, "sentiment_contrasts"))
        return [t for t in items if self._on_side(t.prefixed, split)]

    def sentiment_contrast_dialogues(self, split: str | None = "train") -> list[dialogues.Dialogue]:
        """The sentiment contrasts as attribute requests: for every sentiment text, a dialogue asking for each
        other label about the same subject, answered by the text with its sentiment word swapped to that label.

        Why: each subject's request is answered by a few sentences whose openings each belong to one label, so a
        model can pick the sentiment word from the opening and ignore the request (world-llama-2m-1k-v5: 88.9%,
        five of eight misses the opposite label; docs/claims.md, issue 11). With every opening asked for and
        answered in every label, only the request tells which word follows. Not part of :meth:`corpus`; a recipe
        adds them with the kind ``"sentiment_contrast_dialogues"``. ``split`` keeps those whose rendered text
        falls on that side of the corpus's content split (None: all)."""
        items = self.sentiment_contrast_texts(None)
        out = [dialogues.attribute_dialogue(t.subject, t.axis, t.value, t.text) for t in items]
        return [d for d in out if self._on_side(d.text, split)]

    def style_contrast_dialogues(self, split: str | None = "train") -> list[dialogues.Dialogue]:
        """Every fact dialogue's question asked again in the styles that fact lacks for it
        (:func:`dialogues.style_contrasts`), so only the system instruction tells a polite reply from a rude one.
        Not part of :meth:`corpus`; a recipe adds them with the kind ``"style_contrast_dialogues"``. ``split`` as
        in :meth:`sentiment_contrast_dialogues`."""
        out = dialogues.style_contrasts(list(self._dialogues), self.relations,
                                        rng_for(self.config.seed, "style_contrasts"))
        return [d for d in out if self._on_side(d.text, split)]

    def _on_side(self, text: str, split: str | None) -> bool:
        """Whether ``text`` falls on ``split``'s side of the corpus's content split (None: either)."""
        if split not in (None, "train", "validation"):
            raise LmlabError(f"split must be 'train', 'validation' or None, got {split!r}")
        return split is None or content_split(text, self.config.seed, self.config.validation_fraction) == split

    def edit_requests(self, n: int | None = None) -> list[dict]:
        """``n`` (default ``config.n_edit_requests``) counterfactual edit requests (see :mod:`editing`)."""
        n = self.config.n_edit_requests if n is None else n
        if not isinstance(n, int) or n < 0:
            raise LmlabError(f"n must be a non-negative integer, got {n!r}")
        return editing.edit_requests(self, n, rng_for(self.config.seed, "edits"))

    # ---- the training corpus -----------------------------------------------------------------
    @cached_property
    def _corpus(self) -> tuple[CorpusDocument, ...]:
        seed, fraction = self.config.seed, self.config.validation_fraction
        fact_sentences = [p.prompt + p.answer + "." for p in self.probes("train")]
        texts = {
            "facts": [*self._fact_documents, *fact_sentences],
            "qa": self.qa_documents(),
            "dialogues": [d.text for d in self._dialogues],
            "attributes": [t for item in self._attribute_texts for t in (item.prefixed, item.text)],
        }
        return tuple(CorpusDocument(t, kind, content_split(t, seed, fraction))
                     for kind in CORPUS_KINDS for t in texts[kind])

    def corpus(self, split: str | None = None, kinds: Sequence[str] = CORPUS_KINDS) -> list[CorpusDocument]:
        """The training texts of every kind (fact biographies and sentences, QA, dialogues, attribute text),
        each assigned to "train" or "validation" by its content; ``split`` selects one side.

        Held-out templates, held-out question forms and two-hop phrasings never occur in any of them.
        Long-context documents are drawn on demand (:meth:`long_context_tasks` with a seed of your own).
        """
        if split not in (None, "train", "validation"):
            raise LmlabError(f"split must be 'train', 'validation' or None, got {split!r}")
        for kind in kinds:
            if kind not in CORPUS_KINDS:
                raise LmlabError(f"kinds must be drawn from {', '.join(CORPUS_KINDS)}, got {kind!r}")
        return [d for d in self._corpus if d.kind in kinds and (split is None or d.split == split)]

    # ---- attributes and preferences ----------------------------------------------------------
    @cached_property
    def _attribute_examples(self) -> tuple[attr.AttributeExample, ...]:
        subjects = [(e.name, kind) for kind in SUBJECT_TYPES for e in self.entities[kind]]
        return tuple(attr.attribute_examples(subjects, rng_for(self.config.seed, "attributes")))

    def attribute_examples(self) -> list[attr.AttributeExample]:
        """Every subject x sentiment (+1, 0, -1) x formality (+1, -1), labels exact (see :mod:`attributes`)."""
        return list(self._attribute_examples)

    def _attribute_documents(self) -> list[str]:
        groups: dict[str, list[str]] = {}
        for example in self._attribute_examples:
            groups.setdefault(example.subject, []).append(example.text)
        return [" ".join(sentences) for sentences in groups.values()]

    def preference_pairs(self, split: str) -> list[dict]:
        """Factual and politeness pairs for the facts of ``split`` ("train"/"heldout"); see :mod:`preferences`."""
        if split not in ("train", "heldout"):
            raise LmlabError(f"split must be 'train' or 'heldout', got {split!r}")
        seed = self.config.seed
        facts = preferences.split_facts(self.facts, self.config.heldout_preference_fraction,
                                        rng_for(seed, "preferences", "split"))[split]
        candidates = {kind: self.names(kind) for kind in ENTITY_TYPES}
        return preferences.preference_pairs(facts, self.relations, candidates, rng_for(seed, "preferences", split))

    # ---- long context ----------------------------------------------------------------------
    def long_context_tasks(self, n_tokens_approx: int, n_tasks: int, seed: int = 0,
                           kinds: Sequence[str] = longcontext.KINDS) -> list[longcontext.LongContextTask]:
        """``n_tasks`` tasks per kind, each about ``n_tokens_approx`` whitespace words long."""
        if not isinstance(n_tokens_approx, int) or n_tokens_approx < 32:
            raise LmlabError(f"n_tokens_approx must be an integer >= 32, got {n_tokens_approx!r}")
        if not isinstance(n_tasks, int) or n_tasks < 0:
            raise LmlabError(f"n_tasks must be a non-negative integer, got {n_tasks!r}")
        if not isinstance(seed, int):
            raise LmlabError(f"seed must be an integer, got {seed!r}")
        for kind in kinds:
            if kind not in longcontext.KINDS:
                raise LmlabError(f"kinds must be drawn from {', '.join(longcontext.KINDS)}, got {kind!r}")
        keys, filler, people, more_keys = self._long_context_inputs(("longcontext", seed, n_tokens_approx))
        return longcontext.long_context_tasks(n_tokens_approx, n_tasks, tuple(kinds), keys, filler, people,
                                              more_keys, rng_for(self.config.seed, "longcontext", seed,
                                                                 n_tokens_approx))

    def long_context_task(self, kind: str, n_words: int, depth: float, seed: int,
                          invented_keys: bool = False, spread_invented: bool = True,
                          code_prefixes: int = 0) -> longcontext.LongContextTask:
        """One task of ``kind`` about ``n_words`` words with its needle (or queried line) at ``depth`` in [0, 1];
        a stream of its own per ``seed`` (training draws use seeds the written files never use).

        ``invented_keys`` keys every line of a key-value list with an invented name instead of the world's names
        first: a lookup that must match a key by its tokens, never by a name the model knows.
        A list longer than the world has names (~530 words in the quickstart world) needs invented keys anyway;
        ``spread_invented`` shuffles its lines so they are spread over the list. ``False`` puts them at its end,
        where "depth" would also mean "key novelty" (docs/claims.md, issue 11, sessions 13 and 15): the shipped
        recipes' training streams were drawn that way and keep it. ``code_prefixes > 0`` (training only) makes
        the codes share that many two-digit beginnings."""
        if kind not in longcontext.KINDS:
            raise LmlabError(f"kind must be one of {', '.join(longcontext.KINDS)}, got {kind!r}")
        if not isinstance(n_words, int) or n_words < 32:
            raise LmlabError(f"n_words must be an integer >= 32, got {n_words!r}")
        if not 0.0 <= depth <= 1.0:
            raise LmlabError(f"depth must be in [0, 1], got {depth!r}")
        label = (("longcontext_task", kind, seed, n_words, depth) + (("invented_keys",) if invented_keys else ())
                 + (("code_prefixes", code_prefixes) if code_prefixes else ()))
        keys, filler, people, more_keys = self._long_context_inputs(label)
        rng = rng_for(self.config.seed, *label)
        if kind == "kv_retrieval":
            return longcontext.kv_retrieval(n_words, [] if invented_keys else keys, more_keys, depth, rng,
                                            spread_invented=spread_invented, code_prefixes=code_prefixes)
        return longcontext.needle(n_words, filler, people, depth, rng)

    @cached_property
    def _long_context_fixed(self) -> tuple[list[str], list[str], list[str]]:
        names = [e.name for kind in SUBJECT_TYPES for e in self.entities[kind]]
        reserved = [*self.vocabulary, *names, *self._name_parts]
        filler = [text.sentence(self.relations[f.relation].train_templates[0], f) for f in self.facts]
        return names, reserved, filler

    def _long_context_inputs(self, label: tuple) -> tuple[list[str], list[str], list[str], NameGenerator]:
        names, reserved, filler = self._long_context_fixed
        more_keys = NameGenerator(rng_for(self.config.seed, *label, "keys"), reserved=reserved)
        return names, filler, self.names("person"), more_keys

    # ---- languages -------------------------------------------------------------------------
    @cached_property
    def _name_parts(self) -> frozenset[str]:
        return frozenset(part for e in self._by_name.values() if e.type != "occupation" for part in e.name.split())

    @cached_property
    def languages(self) -> dict[str, SyntheticLanguage]:
        """code -> language ("base", "lang_a", "lang_b"); see :mod:`languages` for the family tree."""
        return build_languages(self.vocabulary, self._name_parts, self.config.seed)

    @property
    def language_family(self) -> dict[str, dict]:
        return family_tree(self.languages)

    def _language(self, lang: str) -> SyntheticLanguage:
        if lang not in LANGUAGE_CODES:
            raise LmlabError(f"lang must be one of {', '.join(LANGUAGE_CODES)}, got {lang!r}")
        return self.languages[lang]

    def translate(self, item: Fact | str | Sequence[str], lang: str) -> str | list[str]:
        """A ``Fact`` -> its canonical sentence in ``lang`` (with that language's word order);
        a base-language string -> word-for-word translation (same order, spacing kept);
        a list of tokens -> list of translated tokens."""
        language = self._language(lang)
        if isinstance(item, Fact):
            if item.relation not in self.relations:
                raise LmlabError(f"item: unknown relation {item.relation!r}")
            return render_fact(language, item, self.relations[item.relation])
        if isinstance(item, str):
            return translate_text(language, item, set(self._name_parts))
        if isinstance(item, Sequence) and all(isinstance(t, str) for t in item):
            return translate_tokens(language, item, set(self._name_parts))
        raise LmlabError(f"item must be a Fact, a string or a list of tokens, got {type(item).__name__}")

    def parallel_sentences(self) -> list[dict]:
        """One record per fact: the same fact in every language, plus each language's names."""
        out = []
        for fact in self.facts:
            relation = self.relations[fact.relation]
            record = {"fact": fact.to_dict(), "sentences": {}, "names": {}}
            for code, lang in self.languages.items():
                record["sentences"][code] = render_fact(lang, fact, relation)
                obj = lang.word(fact.object) if relation.object_type == "occupation" else lang.name(fact.object)
                record["names"][code] = {"subject": lang.name(fact.subject), "object": obj}
            out.append(record)
        return out

    def language_documents(self, lang: str) -> list[str]:
        """One paragraph per subject: its facts' canonical sentences in ``lang``."""
        language = self._language(lang)
        groups = text.group_by_subject(self.facts)
        return [" ".join(render_fact(language, f, self.relations[f.relation]) for f in facts)
                for facts in groups.values()]

    # ---- bias --------------------------------------------------------------------------------
    @property
    def first_name_genders(self) -> dict[str, str]:
        return first_name_genders(self.entities)

    @cached_property
    def bias_truth(self) -> dict:
        """Planted occupation genders, strength b, and the association measured in ``works_as`` facts."""
        people = self.entities["person"]
        assignment = {p.name: self.lookup(p.name, "works_as") for p in people}
        measured = measure_association(people, assignment, self.occupation_gender)
        return {"strength": self.config.bias_strength, "first_names": self.first_name_genders,
                "templates": list(BIAS_TEMPLATES), **measured}

    def counterfactual_pairs(self) -> list[dict]:
        """Name-swap sentence pairs for every occupation (see :func:`bias.counterfactual_pairs`)."""
        return counterfactual_pairs(self.first_name_genders, self.occupation_gender)

    # ---- output ------------------------------------------------------------------------------
    def write(self, directory, overwrite: bool = False) -> None:
        """Write every split and ground-truth table (see :mod:`writer`)."""
        write_world(self, directory, overwrite=overwrite)

    def __repr__(self) -> str:
        edits = f", edits={len(self.edits)}" if self.edits else ""
        return f"World(seed={self.config.seed}, facts={len(self.facts)}, entities={len(self._by_name)}{edits})"


def build_world(config: WorldConfig | None = None) -> World:
    """Generate the world for ``config`` (default: ``WorldConfig()``)."""
    if config is None:
        config = WorldConfig()
    if not isinstance(config, WorldConfig):
        raise LmlabError(f"config must be a WorldConfig, got {type(config).__name__}")
    return World(config)
