"""The synthetic world's ground truth must be exact, reproducible and leak-free.

Each test checks a property other lmlab methods rely on, and would fail if that property broke
(e.g. the leak test first proves its detector fires on the training templates).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from lmlab.data.world import (Fact, WorldConfig, build_world, label_formality, label_politeness,
                              label_sentiment, load_config, load_world)
from lmlab.data.world.templates import render
from lmlab.data.world.text import find_template_leaks
from lmlab.errors import LmlabError


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig.quickstart())


@pytest.fixture(scope="module")
def tiny():
    return build_world(WorldConfig.tiny())


def _dir_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ---- reproducibility ----------------------------------------------------------------------------
def test_same_seed_writes_byte_identical_directories(tmp_path):
    build_world(WorldConfig.tiny(seed=3, bias_strength=0.5)).write(tmp_path / "a")
    build_world(WorldConfig.tiny(seed=3, bias_strength=0.5)).write(tmp_path / "b")
    a, b = _dir_bytes(tmp_path / "a"), _dir_bytes(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert {"train.jsonl", "probes_train.jsonl", "probes_heldout.jsonl", "two_hop.jsonl", "attributes.jsonl",
            "preferences.jsonl", "long_context.jsonl", "parallel.jsonl", "facts.json", "entities.json",
            "bias_truth.json", "languages.json", "world_config.json", "corpus.jsonl", "qa_train.jsonl",
            "qa_heldout.jsonl", "dialogues.jsonl", "attribute_text.jsonl", "edits.jsonl", "qa_extra.jsonl",
            "sentiment_contrasts.jsonl", "facts_extra.jsonl", "sentiment_contrast_dialogues.jsonl",
            "style_contrast_dialogues.jsonl"} <= set(a)
    assert all(a[name] == b[name] for name in a)
    assert all(a[name] for name in a), "no file may be empty"


def test_different_seed_gives_different_facts():
    assert build_world(WorldConfig.tiny(seed=0)).facts != build_world(WorldConfig.tiny(seed=1)).facts


def test_config_round_trips_and_world_reloads(tmp_path, tiny):
    assert WorldConfig.from_dict(tiny.config.to_dict()) == tiny.config
    tiny.write(tmp_path / "w")
    assert load_config(tmp_path / "w") == tiny.config
    assert load_world(tmp_path / "w").facts == tiny.facts


# ---- ground truth -------------------------------------------------------------------------------
def test_every_country_has_one_capital_inside_it(world):
    capitals = [f for f in world.facts if f.relation == "capital_of"]
    assert sorted(f.object for f in capitals) == sorted(world.names("country"))
    for fact in capitals:
        assert world.lookup(fact.subject, "city_in") == fact.object


def test_relations_are_functional_and_typed(world):
    seen = set()
    for fact in world.facts:
        relation = world.relations[fact.relation]
        assert (fact.subject, fact.relation) not in seen
        seen.add((fact.subject, fact.relation))
        assert world.entity(fact.subject).type == relation.subject_type
        assert world.entity(fact.object).type == relation.object_type


def test_two_hop_answers_are_compositions_of_lookups(world):
    probes = world.two_hop_probes()
    assert {p.fact.relation for p in probes} == set(world.two_hop_relations)
    for probe in probes:
        path = world.two_hop_relations[probe.fact.relation].path
        assert probe.answer == " " + world.compose(probe.fact.subject, path)
        first, second = probe.hops
        assert world.lookup(first.subject, first.relation) == first.object == second.subject


def test_lookup_rejects_unknown_subject_and_relation(world):
    with pytest.raises(LmlabError, match="subject"):
        world.lookup("Nobody Atall", "born_in")
    with pytest.raises(LmlabError, match="relation"):
        world.lookup(world.names("person")[0], "likes")


# ---- training text and probes -------------------------------------------------------------------
def test_every_fact_appears_under_every_training_template(world):
    text = "\n".join(world.training_documents())
    for fact in world.facts:
        for template in world.relations[fact.relation].train_templates:
            assert render(template, fact.subject, fact.object) + "." in text


def test_heldout_and_two_hop_templates_never_occur_in_training_text(world):
    text = "\n".join(world.training_documents(extras=("attributes", "lang_a", "lang_b")))
    train = [t for r in world.relations.values() for t in r.train_templates]
    assert find_template_leaks(train, text) == train  # the detector does fire
    hidden = [t for r in world.relations.values() for t in r.heldout_templates]
    hidden += [t for r in world.two_hop_relations.values() for t in r.templates]
    assert find_template_leaks(hidden, text) == []
    for probe in world.probes("heldout") + world.two_hop_probes():
        assert probe.prompt not in text


def test_probe_convention(world):
    text = "\n".join(world.training_documents())
    for probe in world.probes("train"):
        assert probe.answer.startswith(" ") and not probe.answer.startswith("  ")
        assert not probe.prompt.endswith(" ")
        assert probe.prompt + probe.answer + "." in text
    n = world.config.n_heldout_templates
    assert len(world.probes("heldout")) == n * len(world.facts)


def test_documents_are_deterministic_and_cover_all_subjects(world):
    again = build_world(WorldConfig.quickstart())
    assert again.training_documents() == world.training_documents()
    subjects = {f.subject for f in world.facts}
    assert len(world.training_documents()) == len(subjects) * world.config.n_train_templates


# ---- attribute text and preferences --------------------------------------------------------------
def test_labelling_functions_recover_generated_labels(world):
    examples = world.attribute_examples()
    assert {(e.sentiment, e.formality) for e in examples} == {(s, f) for s in (1, 0, -1) for f in (1, -1)}
    for example in examples:
        assert label_sentiment(example.text) == example.sentiment, example.text
        assert label_formality(example.text) == example.formality, example.text
    for doc in world.training_documents():
        assert (label_sentiment(doc), label_formality(doc), label_politeness(doc)) == (0, 0, 0)


def test_preference_pairs_have_exact_ground_truth(world):
    train, heldout = world.preference_pairs("train"), world.preference_pairs("heldout")
    assert train and heldout
    key = lambda pair: tuple(sorted(pair["fact"].items()))  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in heldout}
    for pair in train + heldout:
        fact = Fact.from_dict(pair["fact"])
        truth = render(world.relations[fact.relation].train_templates[0], fact.subject, fact.object)
        assert pair["chosen"].startswith(" ") and truth in pair["chosen"]
        if pair["reason"] == "factual":
            assert truth not in pair["rejected"]
        else:
            assert pair["reason"] == "politeness" and truth in pair["rejected"]
            assert (label_politeness(pair["chosen"]), label_politeness(pair["rejected"])) == (1, -1)


# ---- bias ---------------------------------------------------------------------------------------
def test_bias_association_tracks_strength():
    measured = []
    for strength in (0.0, 0.5, 1.0):
        world = build_world(WorldConfig.tiny(n_people=600, n_occupations=6, bias_strength=strength))
        truth = world.bias_truth
        measured.append(truth["overall_measured"])
        if strength == 1.0:
            for occ, row in truth["occupations"].items():
                assert row["measured"] == (1.0 if row["planted"] == "female" else -1.0), occ
    assert abs(measured[0]) < 0.05
    assert abs(measured[1] - 0.5) < 0.1
    assert measured[2] == 1.0
    assert measured[0] < measured[1] < measured[2]


def test_first_name_gender_is_known_and_counterfactuals_swap_only_the_name(world):
    genders = world.first_name_genders
    for person in world.entities["person"]:
        assert genders[person.name.split()[0]] == person.gender
    for pair in world.counterfactual_pairs():
        assert genders[pair["female_name"]] == "female" and genders[pair["male_name"]] == "male"
        assert pair["female_text"].replace(pair["female_name"], pair["male_name"], 1) == pair["male_text"]


# ---- languages ----------------------------------------------------------------------------------
def test_parallel_sentences_align_and_names_map_consistently(world):
    records = world.parallel_sentences()
    assert len(records) == len(world.facts)
    mapping: dict[tuple[str, str], str] = {}
    for record in records:
        fact = Fact.from_dict(record["fact"])
        assert set(record["sentences"]) == set(world.languages)
        for code, sentence in record["sentences"].items():
            names = record["names"][code]
            assert sentence.startswith(names["subject"] + " ") and names["object"] in sentence
            for base, translated in ((fact.subject, names["subject"]), (fact.object, names["object"])):
                assert mapping.setdefault((code, base), translated) == translated
        assert record["sentences"]["base"] == world.translate(fact, "base")
        assert record["sentences"]["lang_b"] == world.translate(fact, "lang_b")
    sov = records[0]["sentences"]["lang_b"]
    assert sov.startswith(records[0]["names"]["lang_b"]["subject"] + " " + records[0]["names"]["lang_b"]["object"])


def test_script_language_uses_a_disjoint_alphabet(world):
    base = {ch for r in world.parallel_sentences() for ch in r["sentences"]["base"] if ch.isalpha()}
    script = {ch for r in world.parallel_sentences() for ch in r["sentences"]["lang_b"] if ch.isalpha()}
    assert base and script and not base & script
    assert all(unicodedata.name(ch).startswith("CYRILLIC") for ch in script)


def test_language_family_and_word_for_word_translation(world):
    family = world.language_family
    assert family["lang_a"]["parent"] == "base" and family["lang_b"]["parent"] == "lang_a"
    assert family["base"]["parent"] is None
    person = world.names("person")[0]
    translated = world.translate(f"{person} works as a baker.", "lang_a")
    assert translated.startswith(person + " ") and "works" not in translated
    assert world.translate(["The", "code"], "lang_a")[0][0].isupper()
    with pytest.raises(LmlabError, match="vocabulary"):
        world.translate("zebra", "lang_a")
    with pytest.raises(LmlabError, match="lang"):
        world.translate("the", "klingon")


# ---- long context -------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [64, 300, 1500])
def test_long_context_answer_occurs_once_and_length_is_respected(tiny, length):
    tasks = tiny.long_context_tasks(length, 3, seed=7)
    assert [t.kind for t in tasks] == ["kv_retrieval"] * 3 + ["needle"] * 3
    for task in tasks:
        assert task.answer.startswith(" ") and task.context.count(task.answer.strip()) == 1
        assert task.context.count(task.key) >= 1
        assert 0.8 * length <= task.n_words <= 1.2 * length
        assert 0.0 <= task.depth <= 1.0
    needles = [t.depth for t in tasks if t.kind == "needle"]
    assert needles == sorted(needles) and needles[0] < 0.2 < 0.8 < needles[-1]


# ---- validation and writing ----------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("n_people", -1), ("n_cities", 0), ("n_occupations", 1), ("bias_strength", 1.5), ("bias_strength", -0.1),
    ("n_train_templates", 9), ("seed", "x"), ("long_context_lengths", (8,)), ("n_heldout_templates", 0),
])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(LmlabError, match=field):
        WorldConfig.tiny(**{field: value})


def test_unknown_config_key_is_rejected():
    with pytest.raises(LmlabError, match="n_peeple"):
        WorldConfig.from_dict({"n_peeple": 3})


def test_write_refuses_non_empty_directory_unless_overwrite(tmp_path, tiny):
    target = tmp_path / "world"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(LmlabError, match="not empty"):
        tiny.write(target)
    assert (target / "keep.txt").exists()
    tiny.write(target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "facts.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"], "no temp dirs left behind"
