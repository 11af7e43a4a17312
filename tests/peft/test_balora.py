"""BA-LoRA regularisers: the paper's definitions on hand-checkable inputs, and use in a training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lmlab
from lmlab.peft import BALoRAConfig, BALoRAObjective, add_adapter, balora_regularizer, balora_terms
from lmlab.peft.balora import consistency_nlg, diversity_nlu, svd_term


@pytest.fixture
def model(hf_dir):
    m = lmlab.load(hf_dir("llama_gqa"))
    add_adapter(m, BALoRAConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    return m


def test_terms_at_initialisation(model, ids):
    """B = 0: fine-tuned == pre-trained, so consistency is 0; diversity is -entropy; svd is a ratio in [-1, 0)."""
    logits = model(ids)
    t = balora_terms(model, logits, ids)
    assert t["consistency"].item() == pytest.approx(0.0, abs=1e-6)
    p = logits.float().softmax(-1)
    entropy = -(p * p.log()).sum(-1).mean()
    assert t["diversity"].item() == pytest.approx(-entropy.item(), rel=1e-5)
    s = torch.linalg.svdvals(logits.detach().reshape(-1, logits.shape[-1]).float())
    assert t["svd"].item() == pytest.approx(-(s[:3].sum() / s.sum()).item(), rel=1e-5)
    assert -1.0 <= t["svd"].item() < 0.0


def test_definitions_on_small_tensors():
    ft, pre = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    p_pre, p_ft = pre.softmax(-1), ft.softmax(-1)
    kl = (p_pre * (p_pre.log() - p_ft.log())).sum()
    assert consistency_nlg(ft, pre).item() == pytest.approx(kl.item(), rel=1e-6)
    T = 2.0
    q_pre, q_ft = (pre / T).softmax(-1), (ft / T).softmax(-1)
    want = T * T * (q_pre * (q_pre / q_ft).log()).sum().item()
    assert consistency_nlg(ft, pre, T).item() == pytest.approx(want, rel=1e-6)
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]])
    cov = torch.cov(x.T)
    assert diversity_nlu(x).item() == pytest.approx(2 * cov[0, 1].item() ** 2 / 2, rel=1e-6)
    rank1 = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0, 0.5]))
    assert svd_term(rank1, 1).item() == pytest.approx(-1.0, abs=1e-5)


def test_mask_selects_positions_and_gradients_reach_only_lora(model, ids):
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    targets = ids.clone()
    targets[:, :6] = -100
    logits = model(ids)
    reg = balora_regularizer(model, logits, ids, targets=targets)
    cfg = model.adapter_configs["default"]
    t = balora_terms(model, logits, ids, targets=targets)
    assert reg.item() == pytest.approx(cfg.lambda1 * t["consistency"].item() + cfg.lambda2 * t["diversity"].item()
                                       + cfg.lambda3 * t["svd"].item(), rel=1e-5)
    full = balora_terms(model, logits, ids)
    assert t["diversity"].item() != pytest.approx(full["diversity"].item())
    assert t["consistency"].item() > 0
    (reg * 1e4).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)


def test_objective_trains_and_reports_terms(model, ids):
    objective = BALoRAObjective(lambda1=0.1, lambda2=0.01, lambda3=0.01)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = (ids[:, :-1], ids[:, 1:])
    losses = []
    for _ in range(3):
        loss, metrics = objective(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["ce"].item())
    assert set(metrics) == {"ce", "balora_consistency", "balora_diversity", "balora_svd"}
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0]
    ce = F.cross_entropy(model(batch[0]).reshape(-1, 97), batch[1].reshape(-1))
    assert ce.item() < losses[0]
