"""Editing the shipped reference model: counterfactual requests from the world, the unedited baseline, and an
edit that moves the model towards the new targets while the neighbourhood keeps its answers."""

import pytest
import torch

from lmlab.edit import edit
from lmlab.edit.evaluate import _logp, evaluate_edits, world_edits
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_world_edits_are_counterfactual_and_reproducible(ref):
    edits = world_edits(ref.world, 12, seed=3)
    assert [e.request for e in edits] == [e.request for e in world_edits(ref.world, 12, seed=3)]
    assert len({(e.request.subject, e.request.prompt) for e in edits}) == 12
    for e in edits:
        assert e.request.target_text != e.old and e.old.strip() in {f.object for f in ref.world.facts}
        assert e.paraphrases and all(e.request.subject in p for p in e.paraphrases)
        assert e.paraphrases[0] != e.request.text
        assert all(e.request.subject not in p for p, _ in e.neighbours)
        for prompt, answer in e.portability:  # the two-hop answer follows the NEW object
            assert e.request.subject in prompt
            assert answer.strip() in {ref.world.lookup(e.request.target, r, default=None) for r in ref.world.relations}
    assert any(e.portability for e in edits)


def test_memit_moves_the_edited_facts_and_keeps_the_neighbourhood(ref, tmp_path):
    model, tok = ref.model, ref.tokenizer
    edits = world_edits(ref.world, 4, seed=0)
    base = evaluate_edits(model, tok, edits)
    assert base["efficacy"] == 0.0 and base["efficacy_score"] == 0.0 and base["neighbourhood"] >= 0.9
    prompts = [e.request.text for e in edits]
    new = [e.request.target_text for e in edits]
    before = _logp(model, tok, prompts, new)
    delta = edit(model, tok, [e.request for e in edits], method="memit", corpus=ref.world.training_documents(),
                 stats_dir=tmp_path, mom2_update_weight=100.0, v_num_grad_steps=10)
    after = _logp(model, tok, prompts, new)
    scores = evaluate_edits(model, tok, edits)
    delta.revert(model)
    assert float((after - before).mean()) > 2.0  # nats towards the new targets
    assert scores["neighbourhood"] >= 0.75
    torch.testing.assert_close(_logp(model, tok, prompts, new), before, rtol=0, atol=0)
