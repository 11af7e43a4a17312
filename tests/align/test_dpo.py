"""DPO: the log 2 invariant, trl parity (loss and every gradient), the reference options, training on world pairs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lmlab
from lmlab.align.dpo import DPOObjective, PrecomputedPreferenceData, dpo_loss, pair_logps, precompute_reference
from lmlab.align.preference_data import collate_pairs, tokenize_record
from lmlab.io.checkpoint import hf_state_dict
from lmlab.reference import ASSET_DIR


@pytest.fixture(scope="module")
def pairs(mixed_pairs):
    return mixed_pairs(3)


def test_loss_is_log2_when_policy_is_reference(ref, pairs):
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    obj = DPOObjective(beta=0.1, reference_model=copy.deepcopy(ref.model))
    loss, metrics = obj(ref.model, batch)
    assert abs(loss.item() - math.log(2)) < 1e-6
    # the policy's forward runs with autograd (PyTorch's matmul), the reference's without (lmlab's inference
    # kernels): the same values up to fp32 summation order, ~1 ulp of rewards of magnitude ~10 (CPUs with and
    # without AVX-512 round differently)
    assert abs(float(metrics["rewards/margin"])) < 1e-5


def test_label_smoothing_and_beta_enter_as_in_the_papers():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    h = 0.5 * ((-3.0 + 4.0) - (-5.0 + 4.5))
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.2)
    expected = -0.8 * math.log(1 / (1 + math.exp(-h))) - 0.2 * math.log(1 / (1 + math.exp(h)))
    assert abs(loss.item() - expected) < 1e-6


def test_reference_modes_agree(ref, pairs):
    """A frozen copy, precomputed log-probs and LoRA-disabled give the same loss on an adapted policy."""
    from lmlab.peft.inject import add_adapter
    from lmlab.peft.lora import LoraConfig

    policy = copy.deepcopy(ref.model)
    add_adapter(policy, LoraConfig(r=4, init_b="random"))  # a non-zero adapter, so policy != reference
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    off, _ = DPOObjective(reference="adapters_off")(policy, batch)
    frozen, _ = DPOObjective(reference_model=copy.deepcopy(ref.model))(policy, batch)
    data = PrecomputedPreferenceData(pairs, precompute_reference(ref.model, pairs, ref.tokenizer.pad_id, batch_size=4),
                                     ref.tokenizer.pad_id, shuffle=False)
    pre_batch = next(iter(data.batches(len(pairs))))
    pre, _ = DPOObjective(reference="copy")(policy, pre_batch)
    assert abs(off.item() - math.log(2)) > 1e-4
    assert abs(off.item() - frozen.item()) < 1e-6
    assert abs(pre.item() - frozen.item()) < 1e-5


def _trl_trainer(hf_model, hf_ref, tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ds = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], beta=0.1, per_device_train_batch_size=2,
                     use_cpu=True, bf16=False, logging_steps=1, max_length=None)
    return DPOTrainer(model=hf_model, ref_model=hf_ref, args=args, train_dataset=ds, processing_class=tokenizer)


def test_loss_and_gradients_equal_trl(ref, pairs, tmp_path):
    """Same weights, same chosen/rejected batch: trl's DPOTrainer loss and gradients equal ours within 1e-5."""
    import transformers
    from transformers import AutoModelForCausalLM

    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(ASSET_DIR)
    hf_model = AutoModelForCausalLM.from_pretrained(ASSET_DIR, attn_implementation="eager", dtype=torch.float32)
    hf_ref = AutoModelForCausalLM.from_pretrained(ASSET_DIR, attn_implementation="eager", dtype=torch.float32)
    trainer = _trl_trainer(hf_model, hf_ref, hf_tok, tmp_path)
    policy = lmlab.load(ASSET_DIR)
    with torch.no_grad():  # move the policy away from the reference, identically on both sides
        gen = torch.Generator().manual_seed(0)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        theirs = dict(hf_model.named_parameters())
        for name, value in hf_state_dict(policy).items():
            theirs[name].copy_(value)

    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    hf_model.train()
    trl_loss = trainer.compute_loss(hf_model, {k: v.clone() for k, v in batch.items()})
    trl_loss.backward()
    ours_obj = DPOObjective(beta=0.1, reference_model=lmlab.load(ASSET_DIR))
    policy.train()
    loss, _ = ours_obj(policy, batch)
    loss.backward()
    assert abs(loss.item() - trl_loss.item()) < 1e-5, (loss.item(), trl_loss.item())
    grads = copy.deepcopy(policy)
    with torch.no_grad():
        for p_grad, p in zip(grads.parameters(), policy.parameters()):
            p_grad.copy_(p.grad)
    for name, g in hf_state_dict(grads).items():
        torch.testing.assert_close(g, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_prompt_boundary_equals_trl_on_a_chat_template(ref):
    """Conversational records: the prompt/response split equals trl's tokenisation."""
    import transformers
    from trl.data_utils import _tokenize, common_prefix_length

    from lmlab.align.preference_data import record_from_dict

    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(ASSET_DIR)
    d = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where was Zarek born?"}],
         "chosen": [{"role": "assistant", "content": "In Mirova."}],
         "rejected": [{"role": "assistant", "content": "Ugh, in Tesk."}]}
    ours = tokenize_record(ref.tokenizer, record_from_dict(d, "chat record"))
    prompt = _tokenize(hf_tok, d["prompt"], add_generation_prompt=True)["input_ids"]
    full_c = _tokenize(hf_tok, d["prompt"] + d["chosen"])["input_ids"]
    full_r = _tokenize(hf_tok, d["prompt"] + d["rejected"])["input_ids"]
    cut = min(common_prefix_length(prompt, full_c), common_prefix_length(prompt, full_r))
    assert ours.prompt_ids == list(prompt[:cut])
    assert ours.chosen_ids == list(full_c[cut:]) and ours.rejected_ids == list(full_r[cut:])
    # and plain text (EOS appended to each response, BOS from the post-processor)
    text = record_from_dict({"prompt": "Question: Where?\nAnswer:", "chosen": " Mirova.", "rejected": " Tesk."}, "t")
    mine = tokenize_record(ref.tokenizer, text)
    p_ids = hf_tok("Question: Where?\nAnswer:")["input_ids"]
    c_ids = hf_tok("Question: Where?\nAnswer: Mirova." + hf_tok.eos_token)["input_ids"]
    n = common_prefix_length(p_ids, c_ids)
    assert mine.prompt_ids == p_ids[:n] and mine.chosen_ids == c_ids[n:]


def test_dpo_training_prefers_chosen(ref, pairs):
    """A few steps of DPO on world pairs raise the implicit reward margin and the chosen-vs-rejected accuracy."""
    policy = copy.deepcopy(ref.model).train()
    obj = DPOObjective(beta=0.1, reference_model=copy.deepcopy(ref.model))
    batch = collate_pairs(pairs, ref.tokenizer.pad_id)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss, metrics = obj(policy, batch)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss, metrics = obj(policy, batch)
    assert loss.item() < first - 0.1
    assert float(metrics["rewards/accuracy"]) == 1.0
    c, r = pair_logps(policy, batch)
    assert bool((c > r).float().mean() >= 0.5)
