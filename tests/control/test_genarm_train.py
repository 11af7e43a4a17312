"""GenARM's reward-model training: the loss equals the paper's formula on uneven padded pairs (value and
gradients), and training on the world's politeness pairs makes the ARM prefer held-out polite replies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmlab import LmlabError
from lmlab.align.preference_data import collate_pairs, tokenize_record, world_preferences
from lmlab.control import GenARM
from lmlab.control.genarm_train import GenARMObjective, arm_loss, train_arm
from lmlab.core.generate import generate
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def pairs_of(ref, split: str, reason: str, n: int):
    return [tokenize_record(ref.tokenizer, r) for r in world_preferences(ref.world, split, reason)[:n]]


def summed_logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """sum_t log p(y_t | x, y_<t), one unpadded row at a time."""
    ids = torch.tensor([prompt + response])
    logp = model(ids)[0, :-1].float().log_softmax(-1)
    return logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), ids[0, len(prompt):]].sum()


def test_loss_and_gradients_equal_the_formula(ref):
    arm = copy.deepcopy(ref.model)
    pairs = pairs_of(ref, "train", "politeness", 2) + pairs_of(ref, "train", "factual", 2)
    lengths = {len(p.chosen_ids) for p in pairs} | {len(p.rejected_ids) for p in pairs}
    assert len(lengths) > 2  # uneven rows: padding is exercised
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    loss, metrics = GenARMObjective(beta_r=0.3)(arm, batch)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in arm.named_parameters()}
    arm.zero_grad()
    manual = torch.stack([-F.logsigmoid(0.3 * (summed_logp(arm, p.prompt_ids, p.chosen_ids)
                                               - summed_logp(arm, p.prompt_ids, p.rejected_ids))) for p in pairs]).mean()
    manual.backward()
    assert abs(loss.item() - manual.item()) < 1e-5
    for n, p in arm.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    assert abs(float(arm_loss(torch.tensor([-2.0]), torch.tensor([-2.0]))[0]) - 0.6931472) < 1e-6  # log 2 at a tie
    assert 0.0 <= float(metrics["rewards/accuracy"]) <= 1.0


@torch.no_grad()
def accuracy(model, pairs) -> float:
    wins = [float(summed_logp(model, p.prompt_ids, p.chosen_ids) > summed_logp(model, p.prompt_ids, p.rejected_ids))
            for p in pairs]
    return sum(wins) / len(wins)


def test_training_on_politeness_pairs_generalises(ref):
    train, held = pairs_of(ref, "train", "politeness", 32), pairs_of(ref, "heldout", "politeness", 16)
    arm = copy.deepcopy(ref.model)
    before = accuracy(arm, held)
    report = train_arm(arm, train, ref.tokenizer.pad_id, steps=12, micro_batch=4, lr=3e-3, beta_r=0.05)
    after = accuracy(arm, held)
    assert report.loss_last < report.loss_first
    assert after >= 0.75 and after > before + 0.5, (before, after)  # the base prefers the rude replies
    # the trained ARM guides decoding; weight 0 is the base exactly
    prompts = [p.prompt_ids for p in held[:3]]
    base = generate(ref.model, prompts, max_new_tokens=8, stop_token_ids=[])
    zero = generate(ref.model, prompts, max_new_tokens=8, stop_token_ids=[],
                    logits_processors=[GenARM([arm], weights=[0.0], base=ref.model)])
    assert zero == base


def test_errors(ref):
    with pytest.raises(LmlabError, match="beta_r must be finite and > 0"):
        GenARMObjective(beta_r=0.0)
    with pytest.raises(LmlabError, match="steps must be >= 1"):
        train_arm(copy.deepcopy(ref.model), pairs_of(ref, "train", "politeness", 2), ref.tokenizer.pad_id, steps=0)
