"""Text perturbations for any task: deterministic, and each makes the kind of change it names."""

import random
import re

import pytest

from lmlab.errors import LmlabError
from lmlab.eval.robustness import (KEYBOARD_NEIGHBOURS, PERTURBATIONS, dialect, parallel_gap, perturb, perturb_text,
                                   typo, verbosity)

TEXT = ("What is the capital of Zarek? She is going to start working soon. They are not home. "
        "There is a big city. Return the largest number in the list.")


@pytest.mark.parametrize("kind", [k for k in PERTURBATIONS if k != "world_codeswitch"])
def test_deterministic_and_changes_text(kind):
    a = perturb_text(TEXT, kind, seed=3)
    assert a == perturb_text(TEXT, kind, seed=3)
    assert a != TEXT
    different_seed = {perturb_text(TEXT, kind, seed=s) for s in range(6)}
    if kind != "dialect":  # dialect rules are deterministic at rate 1
        assert len(different_seed) > 1


def test_typo_uses_keyboard_neighbours_only():
    out = typo(TEXT, random.Random(0), rate=0.3)
    assert len(out) == len(TEXT)
    diffs = [(a, b) for a, b in zip(TEXT, out) if a != b]
    assert diffs
    for a, b in diffs:
        assert b.lower() in KEYBOARD_NEIGHBOURS[a.lower()]
        assert a.isupper() == b.isupper()


def test_protected_words_survive():
    for kind in ("typo", "swap_chars", "change_case", "synonym", "paraphrase"):
        out = perturb_text(TEXT, kind, seed=1, rate=1.0, protect=["Zarek", "capital"])
        assert "Zarek" in out and "capital" in out, kind


def test_verbosity_adds_fillers_and_keeps_the_content():
    out = verbosity(TEXT, random.Random(0), n_fillers=2)
    assert len(out) > len(TEXT)
    assert re.sub(r"[^a-z]", "", out.lower()).count("capitalofzarek") == 1
    for word in ("capital", "Zarek", "largest", "number"):
        assert word in out


def test_paraphrase_rewrites_questions_by_template():
    out = perturb_text("What is the capital of Zarek?", "paraphrase", seed=0, rate=0.0)
    assert out in ("Can you tell me what the capital of Zarek is?", "Do you know what the capital of Zarek is?")


def test_dialect_rules():
    out = dialect("She is going to start working. They are not home. There is a big city. You all know it.",
                  random.Random(0))
    assert "gon'" in out and "workin'" in out and "ain't" in out and "It's a big city" in out and "Y'all" in out


def test_world_codeswitch_translates_world_words():
    from lmlab.data.world import WorldConfig, build_world

    world = build_world(WorldConfig.tiny())
    occ = sorted(world.occupation_gender)[0]
    out = perturb_text(f"Mira works as a {occ}.", "world_codeswitch", world=world, rate=1.0, protect=["Mira"])
    lexicon = world.languages["lang_a"].lexicon
    assert out == f"Mira {lexicon['works']} {lexicon['as']} {lexicon['a']} {lexicon[occ]}."
    with pytest.raises(LmlabError):
        perturb_text("x", "world_codeswitch")


def test_perturb_documents_and_mixed_kinds():
    docs = [{"prompt": "Zarek Vell was born in", "answer": " Mirova", "id": 1},
            {"prompt": "What is the largest city?", "answer": " Tolk", "id": 2}]
    out = perturb(docs, ["synonym", "typo"], seed=0, rate=1.0, protect_fields=["answer"])
    assert [d["id"] for d in out] == [1, 2] and [d["answer"] for d in out] == [" Mirova", " Tolk"]
    assert docs[0]["prompt"] == "Zarek Vell was born in"  # originals untouched
    assert out[0]["prompt"] != docs[0]["prompt"]
    # per-document seeding: a perturbation depends only on the text, the seed and the position
    alone = perturb(docs[1:], ["synonym", "typo"], seed=0, rate=1.0, protect_fields=["answer"])
    assert perturb_text(docs[1]["prompt"], ["synonym", "typo"], seed=0, index=0, rate=1.0) == alone[0]["prompt"]
    with pytest.raises(LmlabError):
        perturb(docs, "typo", fields=["missing"])
    with pytest.raises(LmlabError):
        perturb_text("x", "nonsense")


def test_parallel_gap():
    g = parallel_gap([1, 1, 1, 0], [1, 0, 0, 0])
    assert g["gap"] == pytest.approx(0.5) and g["flip_rate"] == pytest.approx(0.5)
    assert g["relative_drop"] == pytest.approx(0.5 / 0.75)
