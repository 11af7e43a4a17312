"""The world data the next method families score against (issue 11): QA, dialogues, attribute text,
long-context tasks, counterfactual edits and the content split.

Each test would fail on a plausible wrong implementation: the leak test first shows its detector fires
on training forms; the edit test enumerates the changed facts independently of ``apply_edit``.
"""

from __future__ import annotations

import re

import pytest

from lmlab.data.world import WorldConfig, build_world, label_formality, label_politeness, label_sentiment
from lmlab.data.world.attribute_text import AXES, attribute_text_words
from lmlab.data.world.dialogues import STYLE_INSTRUCTIONS, dialogue_words
from lmlab.data.world.questions import QUESTIONS, question_regex, question_words
from lmlab.data.world.split import content_split
from lmlab.data.world.templates import EXTRA_TEMPLATES, RELATIONS
from lmlab.data.world.text import find_template_leaks, sentence
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.quickstart())


@pytest.fixture(scope="module")
def corpus_text(world):
    return "\n".join(d.text for d in world.corpus())


# ---- held-out forms never reach training text ----------------------------------------------------
def test_heldout_templates_questions_and_two_hop_never_occur_in_the_corpus(world, corpus_text):
    train_templates = [t for r in world.relations.values() for t in r.train_templates]
    assert find_template_leaks(train_templates, corpus_text) == train_templates  # the detector fires
    train_questions = [q for forms in QUESTIONS.values() for q in forms.train]
    assert all(question_regex(q).search(corpus_text) for q in train_questions)  # and on questions too
    hidden = [t for r in world.relations.values() for t in r.heldout_templates]
    hidden += [t for r in world.two_hop_relations.values() for t in r.templates]
    assert find_template_leaks(hidden, corpus_text) == []
    heldout_questions = [q for forms in QUESTIONS.values() for q in forms.heldout]
    assert [q for q in heldout_questions if question_regex(q).search(corpus_text)] == []
    assert not set(heldout_questions) & set(train_questions)


def _word_grams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"\{s\}|\{o\}|[a-z]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_augmentation_question_forms_stay_apart_from_the_heldout_forms(world, corpus_text):
    """The ``extra`` forms (opt-in training text, written after the held-out forms were known) leak no held-out
    form, are not in the corpus, and add no four-word span of a held-out form beyond what the statement templates
    and training forms already hold -- so held-out QA still measures extraction under a new question form."""
    extra_docs = world.qa_extra_documents(split=None)
    assert len(extra_docs) == 4 * len(world.facts)
    extra_text = "\n".join(extra_docs)
    extras = [q for forms in QUESTIONS.values() for q in forms.extra]
    assert all(len(forms.extra) == 4 for forms in QUESTIONS.values())
    assert all(question_regex(q).search(extra_text) for q in extras)  # the detector fires on them
    heldout_questions = [q for forms in QUESTIONS.values() for q in forms.heldout]
    assert [q for q in heldout_questions if question_regex(q).search(extra_text)] == []
    assert not set(extras) & {q for forms in QUESTIONS.values() for q in (*forms.train, *forms.heldout)}
    assert [q for q in extras if question_regex(q).search(corpus_text)] == []  # opt-in only
    hidden = [t for r in world.relations.values() for t in r.heldout_templates]
    assert find_template_leaks(hidden, extra_text) == []
    known = set().union(*(_word_grams(t) for r in RELATIONS for t in r.train_templates),
                        *(_word_grams(q) for forms in QUESTIONS.values() for q in forms.train))
    new_spans = set().union(*(_word_grams(q) for q in extras)) - known
    assert {q: _word_grams(q) & new_spans for q in heldout_questions if _word_grams(q) & new_spans} == {}
    assert _word_grams("Tell me the birthplace of {s}.") & {("the", "birthplace", "of", "{s}")}  # spans fire
    train = world.qa_extra_documents()
    assert set(train) < set(extra_docs) and len(train) > 0.8 * len(extra_docs)
    assert not set(train) & set(world.qa_extra_documents("validation"))
    assert train == build_world(WorldConfig.quickstart()).qa_extra_documents()
    assert {p.answer for p in world.qa_probes("extra")} <= {" " + f.object for f in world.facts}


def test_augmentation_templates_state_every_fact_and_stay_apart_from_the_heldout_ones(world, corpus_text):
    """The ``facts_extra`` biographies (EXTRA_TEMPLATES, opt-in training text written after the held-out templates
    were known) state every fact once under each augmentation template, are not in the corpus, leak no held-out or
    two-hop phrasing and add no four-word span of one beyond what the training templates hold -- so held-out
    paraphrase recall still measures phrasings the model never read."""
    docs = world.fact_extra_documents(split=None)
    text = "\n".join(docs)
    sentences = re.split(r"(?<=\.) ", " ".join(docs))
    wanted = [sentence(t, f) for f in world.facts for t in EXTRA_TEMPLATES[f.relation]]
    assert sorted(sentences) == sorted(wanted)
    assert set(EXTRA_TEMPLATES) == set(world.relations) and {len(t) for t in EXTRA_TEMPLATES.values()} == {2}
    extras = [t for templates in EXTRA_TEMPLATES.values() for t in templates]
    assert find_template_leaks(extras, text) == extras  # the detector fires on them
    assert find_template_leaks(extras, corpus_text) == []  # opt-in only
    hidden = [t for r in world.relations.values() for t in r.heldout_templates]
    hidden += [t for r in world.two_hop_relations.values() for t in r.templates]
    assert find_template_leaks(hidden, text) == []
    assert not set(extras) & {t for r in RELATIONS for t in (*r.train_templates, *r.heldout_templates)}
    known = set().union(*(_word_grams(t) for r in RELATIONS for t in r.train_templates))
    new_spans = set().union(*(_word_grams(t) for t in extras)) - known
    assert {t: _word_grams(t) & new_spans for t in hidden if _word_grams(t) & new_spans} == {}
    assert _word_grams("The city where {s} came into the world is {o}") & _word_grams(hidden[0]) - known  # fires
    train = world.fact_extra_documents()
    assert set(train) < set(docs) and len(train) > 0.8 * len(docs)
    assert not set(train) & set(world.fact_extra_documents("validation"))
    assert train == build_world(WorldConfig.quickstart()).fact_extra_documents()


def test_sentiment_contrasts_are_minimal_pairs_carrying_their_label(world):
    """Each sentiment text gets one copy per other label that differs only in its sentiment word (and article):
    the labelling function gives the new label, formality is unchanged, and the train side holds no validation
    text."""
    originals = [t for t in world.attribute_texts() if t.axis == "sentiment"]
    contrasts = world.sentiment_contrast_texts(split=None)
    assert len(contrasts) == 2 * len(originals)
    for i, original in enumerate(originals):
        pair = contrasts[2 * i:2 * i + 2]
        assert sorted(t.label for t in pair) == sorted({1, 0, -1} - {original.label})
        for t in pair:
            assert label_sentiment(t.text) == t.label and label_formality(t.text) == label_formality(original.text)
            before, after = original.text.split(), t.text.split()
            changed = [(a, b) for a, b in zip(before, after) if a != b]
            assert len(before) == len(after) and 1 <= len(changed) <= 2
            assert all(a in ("a", "an") for a, _ in changed[:-1]) and t.subject == original.subject
    train = world.sentiment_contrast_texts()
    validation = {d.text for d in world.corpus("validation")}
    assert 0.8 * len(contrasts) < len(train) < len(contrasts) and not {t.prefixed for t in train} & validation
    assert [t.prefixed for t in train] == [t.prefixed for t in build_world(WorldConfig.quickstart())
                                           .sentiment_contrast_texts()]


def test_sentiment_contrast_dialogues_ask_for_every_label_the_reply_carries(world):
    """Each sentiment text is requested and answered in both other labels: the request names the reply's label
    (by the world's labelling function), the reply is the contrast text, the subject is the text's own, every
    subject is asked for every label with the same openings, and no training dialogue is a validation text."""
    contrasts = world.sentiment_contrast_texts(split=None)
    requests = world.sentiment_contrast_dialogues(split=None)
    assert len(requests) == len(contrasts) > 0
    for contrast, dialogue in zip(contrasts, requests):
        user, reply = dialogue.messages[0]["content"], dialogue.messages[-1]["content"]
        value = AXES["sentiment"][label_sentiment(reply)][0]
        assert user == f"Write a {value} sentence about {contrast.subject}." and reply == contrast.text
        assert dialogue.style == f"sentiment:{value}" and dialogue.kind == "attribute"
    originals = [d for d in world.dialogues() if d.style.startswith("sentiment:")]
    assert len(requests) == 2 * len(originals)
    for i, original in enumerate(originals):  # each original's opening is asked for under all three labels
        pair = requests[2 * i:2 * i + 2]
        assert {original.style, *(d.style for d in pair)} == {"sentiment:positive", "sentiment:neutral",
                                                             "sentiment:negative"}
        assert all(d.messages[0]["content"].endswith(f"about {contrasts[2 * i].subject}.") for d in pair)
        assert original.messages[0]["content"].endswith(f"about {contrasts[2 * i].subject}.")
    train = world.sentiment_contrast_dialogues()
    validation = {d.text for d in world.corpus("validation")}
    assert 0.8 * len(requests) < len(train) < len(requests) and not {d.text for d in train} & validation
    assert [d.text for d in train] == [d.text for d in build_world(WorldConfig.quickstart())
                                       .sentiment_contrast_dialogues()]


def test_style_contrast_dialogues_ask_each_fact_question_in_every_style(world):
    """Each fact dialogue's question comes back in the styles that fact lacks for it: the same user turn, the
    system instruction of the new style (none for plain), a reply whose politeness label is that style's and
    which still states the fact; so every (fact, question) is answered in all three styles, none twice. The
    train side holds no validation text and no corpus text."""
    originals = [d for d in world.dialogues() if d.kind == "fact"]
    contrasts = world.style_contrast_dialogues(split=None)
    wanted = {"plain": 0, "polite": 1, "rude": -1}
    styles: dict[tuple, list[str]] = {}
    for d in [*originals, *contrasts]:
        styles.setdefault((d.fact, d.messages[-2]["content"]), []).append(d.style)
    assert all(sorted(found) == sorted(wanted) for found in styles.values())
    assert 0 < len(contrasts) < 2 * len(originals)  # a fact's styles often share a question already
    for d in contrasts:
        system = [m["content"] for m in d.messages if m["role"] == "system"]
        assert system == ([STYLE_INSTRUCTIONS[d.style]] if d.style != "plain" else [])
        reply = d.messages[-1]["content"]
        assert label_politeness(reply) == d.politeness == wanted[d.style]
        assert d.fact.subject in reply and d.fact.object in reply
    train = world.style_contrast_dialogues()
    corpus = {d.text for d in world.corpus()}
    assert 0.8 * len(contrasts) < len(train) < len(contrasts) and not {d.text for d in train} & corpus
    assert [d.text for d in train] == [d.text for d in build_world(WorldConfig.quickstart()).style_contrast_dialogues()]


def test_every_heldout_paraphrase_word_occurs_in_training_text(world, corpus_text):
    """Held-out templates recombine training words (docs/world.md): a word no training text contains would
    measure whether a model can read past a token it never met, not paraphrase generalisation. Until session 13,
    13 of the 18 templates had one ("draws a salary from"). No held-out prompt is a prefix of a training
    sentence either, so the training text's own continuation is never the expected answer by accident."""
    from lmlab.data.world.templates import template_words

    seen = template_words([corpus_text])
    heldout = [t for r in world.relations.values() for t in r.heldout_templates]
    assert len(heldout) == 18
    assert {t: sorted(template_words([t]) - seen) for t in heldout if template_words([t]) - seen} == {}
    assert "town" not in seen and "salary" not in seen  # the detector would fire on the old templates
    assert [p.prompt for p in world.probes("heldout") if p.prompt + " " in corpus_text] == []


def test_every_fact_is_asked_in_every_training_question_form(world, corpus_text):
    qa = {d.text for d in world.corpus(kinds=("qa",))}
    probes = world.qa_probes("train")
    assert len(probes) == 2 * len(world.facts)
    assert all(p.prompt + p.answer + "." in qa for p in probes)
    assert all(QUESTIONS[r.name].train[0] == r.question for r in RELATIONS)  # the preference pairs' form
    for probe in world.qa_probes("heldout"):
        assert probe.prompt.startswith("Question: ") and probe.prompt.endswith("\nAnswer:")
        assert probe.answer == " " + world.lookup(probe.fact.subject, probe.fact.relation)


def test_new_words_never_collide_with_entity_names():
    new_words = question_words() | dialogue_words() | attribute_text_words()
    for config in (WorldConfig.tiny(), WorldConfig.quickstart(), WorldConfig.standard()):
        w = build_world(config)
        parts = {part.lower() for e in w._by_name.values() if e.type != "occupation" for part in e.name.split()}
        assert not parts & new_words


# ---- content split ---------------------------------------------------------------------------------
def test_split_is_by_content_so_duplicates_cannot_straddle_it(world):
    docs = world.corpus()
    sides: dict[str, set[str]] = {}
    for d in docs:
        sides.setdefault(d.text, set()).add(d.split)
    assert all(len(s) == 1 for s in sides.values())
    assert len(sides) < len(docs)  # the corpus does hold duplicates (e.g. the same sentence twice)
    share = sum(d.split == "validation" for d in docs) / len(docs)
    assert 0.03 < share < 0.07  # validation_fraction 0.05
    assert {d.split for d in world.corpus("validation")} == {"validation"}
    assert content_split("Mirova is a city.", 0, 0.5) == content_split("Mirova is a city.", 0, 0.5)
    other = [content_split(t, 1, 0.05) for t in sides]  # another seed gives another split
    assert other != [next(iter(sides[t])) for t in sides]


# ---- dialogues and attribute text -------------------------------------------------------------------
def test_dialogue_replies_carry_their_politeness_label(world):
    dialogues = world.dialogues()
    facts = [d for d in dialogues if d.kind == "fact"]
    assert len(facts) == 3 * len(world.facts)
    for d in facts:
        reply = d.messages[-1]["content"]
        assert d.politeness == label_politeness(reply) == {"plain": 0, "polite": 1, "rude": -1}[d.style]
        assert world.lookup(d.fact.subject, d.fact.relation) in reply
        assert d.text.startswith("<|im_start|>") and d.text.endswith("<|im_end|>\n")
        assert (d.messages[0]["role"] == "system") == (d.style != "plain")


def test_attribute_texts_carry_exact_labels_with_and_without_codes(world):
    texts = world.attribute_texts()
    labellers = {"sentiment": label_sentiment, "formality": label_formality, "politeness": label_politeness}
    for t in texts:
        assert labellers[t.axis](t.text) == t.label
        assert t.prefixed == f"{AXES[t.axis][t.label][1]} {t.text}"
    seen = {(t.axis, t.label) for t in texts}
    assert seen == {(axis, label) for axis, labels in AXES.items() for label in labels}
    corpus = {d.text for d in world.corpus(kinds=("attributes",))}
    assert {t.text for t in texts} <= corpus and {t.prefixed for t in texts} <= corpus
    for d in (d for d in world.dialogues() if d.kind == "attribute"):
        axis, value = d.style.split(":")
        label = next(k for k, (v, _) in AXES[axis].items() if v == value)
        assert labellers[axis](d.messages[-1]["content"]) == label


# ---- long context ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["kv_retrieval", "needle"])
def test_long_context_task_places_the_answer_at_the_requested_depth(world, kind):
    for depth in (0.0, 0.5, 1.0):
        task = world.long_context_task(kind, 600, depth, seed=3)
        assert 560 <= task.n_words <= 660
        assert task.context.count(task.answer.strip()) == 1
        assert abs(task.depth - depth) < 0.05
    assert world.long_context_task(kind, 600, 0.5, seed=3) == world.long_context_task(kind, 600, 0.5, seed=3)
    assert world.long_context_task(kind, 600, 0.5, seed=3) != world.long_context_task(kind, 600, 0.5, seed=4)


def test_invented_keys_replace_the_world_names_of_a_key_value_list(world):
    """A 600-word list is keyed by the world's names; with ``invented_keys`` by names no entity has, deterministic
    per seed, and the task keeps its length, depth and unique answer."""
    import re

    names = {e.name for group in world.entities.values() for e in group}
    plain = world.long_context_task("kv_retrieval", 600, 0.5, seed=3, spread_invented=False)
    invented = world.long_context_task("kv_retrieval", 600, 0.5, seed=3, invented_keys=True)
    keys = [re.findall(r"The code of (.+?) is \d+\.", t.context) for t in (plain, invented)]
    assert set(keys[0][:40]) <= names and not set(keys[1]) & names
    assert len(set(keys[1])) == len(keys[1]) and invented.key in keys[1]
    assert invented.context.count(invented.answer.strip()) == 1 and abs(invented.depth - 0.5) < 0.05
    assert invented == world.long_context_task("kv_retrieval", 600, 0.5, seed=3, invented_keys=True)


def test_a_list_longer_than_the_world_has_names_spreads_its_invented_keys_over_every_depth(world):
    """A list that runs out of world names takes invented keys; by default its lines are shuffled so that an
    invented key is as likely at the start as at the end (else depth ~0.8+ would always ask an invented key:
    "depth" would mean "novelty" too). ``spread_invented=False`` keeps the shipped training streams' order (world
    names, then invented keys), and a list the world's names suffice for is the same task either way."""
    import re

    names = {e.name for group in world.entities.values() for e in group}

    def invented_at(task) -> list[bool]:
        return [key not in names for key in re.findall(r"The code of (.+?) is \d+\.", task.context)]

    tail = world.long_context_task("kv_retrieval", 900, 0.9, seed=30, spread_invented=False)
    spread = world.long_context_task("kv_retrieval", 900, 0.9, seed=10)
    flags = invented_at(tail)
    first = flags.index(True)
    assert 0 < first and all(flags[first:]) and tail.key not in names  # world names, then invented: depth 0.9 is novel
    flags = invented_at(spread)
    half = len(flags) // 2
    assert any(flags[:half // 2]) and not all(flags[half:])  # invented keys near the start, world names near the end
    asked = [world.long_context_task("kv_retrieval", 900, 0.9, seed=s) for s in range(40)]
    assert 0 < sum(t.key not in names for t in asked) < 30  # depth 0.9 asks a world name most of the time
    for task in asked[:5]:
        assert abs(task.depth - 0.9) < 0.05 and task.context.count(task.answer.strip()) == 1
    short = [world.long_context_task("kv_retrieval", 300, 0.9, seed=3, spread_invented=spread) for spread in (True, False)]
    assert short[0] == short[1] and not any(invented_at(short[0]))


def test_code_prefixes_make_a_lists_codes_share_a_few_beginnings(world):
    """``code_prefixes=4`` (training only): the codes are still distinct 4-digit numbers, the answer still occurs
    once, and they begin with just 4 two-digit prefixes, a quarter of the lines each; 0 is the plain task."""
    import re
    from collections import Counter

    task = world.long_context_task("kv_retrieval", 600, 0.5, seed=3, code_prefixes=4)
    codes = re.findall(r"The code of .+? is (\d+)\.", task.context)
    heads = Counter(code[:2] for code in codes)
    assert len(codes) == len(set(codes)) > 80 and all(len(code) == 4 for code in codes)
    assert len(heads) == 4 and max(heads.values()) - min(heads.values()) <= 1 + len(codes) % 4
    assert task.context.count(task.answer.strip()) == 1 and abs(task.depth - 0.5) < 0.05
    plain = world.long_context_task("kv_retrieval", 600, 0.5, seed=3)
    assert plain == world.long_context_task("kv_retrieval", 600, 0.5, seed=3, code_prefixes=0)
    assert len({code[:2] for code in re.findall(r"is (\d+)\.", plain.context)}) > 30


# ---- counterfactual edits ------------------------------------------------------------------------------
def _all_facts(w) -> set:
    return set(w.facts) | set(w.two_hop_facts())


def test_apply_edit_of_a_birthplace_changes_exactly_the_birth_country(world):
    person = world.names("person")[0]
    old_city = world.lookup(person, "born_in")
    new_city = next(c for c in world.names("city")
                    if world.lookup(c, "city_in") != world.lookup(old_city, "city_in"))
    edited = world.apply_edit(person, "born_in", new_city)
    changed = _all_facts(world) ^ _all_facts(edited)
    expected = {("born_in", old_city), ("born_in", new_city),
                ("birth_country", world.lookup(old_city, "city_in")),
                ("birth_country", world.lookup(new_city, "city_in"))}
    assert {(f.relation, f.object) for f in changed} == expected
    assert {f.subject for f in changed} == {person}
    assert world.lookup(person, "born_in") == old_city  # the original is untouched
    assert edited.edits and edited.compose(person, ["born_in", "city_in"]) == edited.lookup(new_city, "city_in")


def test_apply_edit_of_a_city_country_re_derives_every_dependent_answer(world):
    city = world.names("city")[-1]
    old, new = world.lookup(city, "city_in"), next(c for c in world.names("country") if c != world.lookup(city, "city_in"))
    edited = world.apply_edit(city, "city_in", new)
    changed_after = _all_facts(edited) - _all_facts(world)
    # ground truth enumerated by hand: the edited fact, every person born or living there, and the
    # city's official language (unless both countries share it)
    expected = {("city_in", city, new)}
    for p in world.names("person"):
        if world.lookup(p, "born_in") == city:
            expected.add(("birth_country", p, new))
        if world.lookup(p, "lives_in") == city:
            expected.add(("home_country", p, new))
    if world.lookup(old, "official_language") != world.lookup(new, "official_language"):
        expected.add(("city_language", city, world.lookup(new, "official_language")))
    assert {(f.relation, f.subject, f.object) for f in changed_after} == expected
    assert len(expected) > 2  # the case is not trivial


def test_bad_edits_are_one_line_errors(world):
    person = world.names("person")[0]
    with pytest.raises(LmlabError, match=r"edit: no capital_of fact about 'Nobody'"):
        world.apply_edit("Nobody", "capital_of", world.names("country")[0])
    with pytest.raises(LmlabError, match="is not a city"):
        world.apply_edit(person, "born_in", world.names("country")[0])
    with pytest.raises(LmlabError, match="already"):
        world.apply_edit(person, "born_in", world.lookup(person, "born_in"))
    with pytest.raises(LmlabError, match="relation must be one of"):
        world.apply_edit(person, "likes", "x")


def test_edit_requests_hold_their_ground_truth(world, corpus_text):
    requests = world.edit_requests()
    assert len(requests) == world.config.n_edit_requests
    assert {r["relation"] for r in requests} == set(world.relations)
    for r in requests:
        edited = world.apply_edit(r["subject"], r["relation"], r["new_object"])
        assert r["target_true"] == " " + world.lookup(r["subject"], r["relation"])
        assert r["target_new"] == " " + edited.lookup(r["subject"], r["relation"])
        for n in r["neighbourhood"]:
            assert n["answer"] == r["target_true"]
        for hop in r["two_hop"]:
            probe = next(p for p in edited.two_hop_probes() if p.prompt == hop["prompt"])
            assert hop["answer_after"] == probe.answer
        for prompt in r["paraphrase_prompts"]:
            assert prompt not in corpus_text
    assert any(h["answer_before"] != h["answer_after"] for r in requests for h in r["two_hop"])


def test_edited_world_neighbourhood_is_unchanged(world):
    r = world.edit_requests(4)[0]
    edited = world.apply_edit(r["subject"], r["relation"], r["new_object"])
    template = world.relations[r["relation"]].train_templates[0]
    for n in r["neighbourhood"]:
        subject = re.sub(r"\s*" + re.escape(template.split("{s}")[1].rsplit(" {o}", 1)[0]) + "$", "", n["prompt"])
        assert edited.lookup(subject, r["relation"]) == world.lookup(subject, r["relation"]) == n["answer"].strip()
