"""Reward models: invariants, trl RewardTrainer parity (loss and gradients), HaF-RM, save/load, training."""

from __future__ import annotations

import copy

import pytest
import torch

import lmlab
from lmlab.align.preference_data import collate_pairs, tokenize_record, world_preferences
from lmlab.align.reward import (HaFRMObjective, RewardObjective, bradley_terry_loss, load_reward_model, reward_model,
                                save_reward_model, score)
from lmlab.errors import LmlabError
from lmlab.io.checkpoint import hf_state_dict
from lmlab.reference import ASSET_DIR


@pytest.fixture(scope="module")
def pairs(mixed_pairs):
    return mixed_pairs(4)


def test_zero_head_scores_every_response_equally(ref, pairs):
    rm = reward_model(copy.deepcopy(ref.model))
    with torch.no_grad():
        rm.score.weight.zero_()
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    assert torch.equal(score(rm, seqs, ref.tokenizer.pad_id), torch.zeros(len(seqs)))


def test_padding_does_not_change_a_score(ref, pairs):
    rm = reward_model(copy.deepcopy(ref.model))
    seqs = [p.prompt_ids + p.chosen_ids for p in pairs]
    together = score(rm, seqs, ref.tokenizer.pad_id)
    alone = torch.cat([score(rm, [s], ref.tokenizer.pad_id) for s in seqs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_loss_and_gradients_equal_trl(ref, pairs, tmp_path):
    import transformers
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(ASSET_DIR)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        ASSET_DIR, num_labels=1, attn_implementation="eager", dtype=torch.float32)
    hf.config.pad_token_id = ref.tokenizer.pad_id
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False,
                        per_device_train_batch_size=2, center_rewards_coefficient=0.01)
    ds = Dataset.from_list([{"chosen": "a b", "rejected": "a c"}])
    trainer = RewardTrainer(model=hf, args=args, train_dataset=ds, processing_class=hf_tok)

    rm = reward_model(lmlab.load(ASSET_DIR), seed=3)
    theirs = dict(hf.named_parameters())
    with torch.no_grad():
        for name, value in hf_state_dict(rm.model).items():
            if name in theirs:
                theirs[name].copy_(value)
        hf.score.weight.copy_(rm.score.weight)
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    hf.train()
    trl_loss = trainer.compute_loss(hf, {"input_ids": batch["input_ids"].clone(),
                                         "attention_mask": batch["attention_mask"].clone()})
    trl_loss.backward()
    rm.train()
    loss, _ = RewardObjective(center_coefficient=0.01)(rm, batch)
    loss.backward()
    assert abs(loss.item() - trl_loss.item()) < 1e-5, (loss.item(), trl_loss.item())
    torch.testing.assert_close(rm.score.weight.grad, hf.score.weight.grad, atol=1e-5, rtol=1e-4)
    grads = copy.deepcopy(rm.model)
    with torch.no_grad():
        for g, p in zip(grads.parameters(), rm.model.parameters()):
            g.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    checked = 0
    for name, g in hf_state_dict(grads).items():
        if name in theirs and theirs[name].grad is not None:
            torch.testing.assert_close(g, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
            checked += 1
    assert checked >= 10  # every decoder matrix and norm, not just the head


def test_margin_and_centering_terms():
    rc, rr = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    plain = bradley_terry_loss(rc, rr)
    assert abs(plain.item() - (-torch.nn.functional.logsigmoid(rc - rr).mean()).item()) < 1e-7
    with_margin = bradley_terry_loss(rc, rr, margin=torch.tensor([0.5, 0.5]))
    assert with_margin.item() > plain.item()
    centred = bradley_terry_loss(rc, rr, center_coefficient=0.1)
    assert abs(centred.item() - plain.item() - 0.1 * torch.mean((rc + rr) ** 2).item()) < 1e-7


def test_haf_rm_with_alpha_zero_is_bradley_terry_and_adds_the_dpo_term(ref, pairs):
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    rm = reward_model(copy.deepcopy(ref.model))
    bt, _ = RewardObjective()(rm, batch)
    haf0, _ = HaFRMObjective(alpha=0.0)(rm, batch)
    assert abs(bt.item() - haf0.item()) < 1e-6
    haf, m = HaFRMObjective(alpha=1.0)(rm, batch)  # policy == reference at the first step: DPO term = log 2
    assert abs(float(m["loss/policy"]) - 0.6931472) < 1e-5
    assert abs(haf.item() - bt.item() - 0.6931472) < 1e-5


def test_training_learns_held_out_politeness(ref):
    """Bradley-Terry on train politeness pairs: held-out pair accuracy well above chance."""
    tok = ref.tokenizer
    train = [tokenize_record(tok, r) for r in world_preferences(ref.world, "train", "politeness")][:48]
    held = [tokenize_record(tok, r) for r in world_preferences(ref.world, "heldout", "politeness")][:32]
    rm = reward_model(copy.deepcopy(ref.model)).train()
    obj = RewardObjective()
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    for step in range(12):
        chunk = train[(step * 8) % len(train):][:8]
        loss, _ = obj(rm, collate_pairs(chunk, tok.pad_id))
        opt.zero_grad()
        loss.backward()
        opt.step()
    r_c = score(rm, [p.prompt_ids + p.chosen_ids for p in held], tok.pad_id)
    r_r = score(rm, [p.prompt_ids + p.rejected_ids for p in held], tok.pad_id)
    assert (r_c > r_r).float().mean().item() >= 0.9


def test_save_load_round_trip_and_errors(ref, tmp_path):
    rm = reward_model(copy.deepcopy(ref.model), seed=1)
    out = save_reward_model(rm, tmp_path / "rm", tokenizer=ref.tokenizer)
    again = load_reward_model(out)
    ids = [ref.tokenizer.encode("Question: Where?\nAnswer: Mirova.")]
    torch.testing.assert_close(score(again, ids, 0), score(rm, ids, 0), atol=0, rtol=0)
    lmlab.save(ref.model, tmp_path / "plain")
    with pytest.raises(LmlabError, match="reward_head.safetensors"):
        load_reward_model(tmp_path / "plain")
