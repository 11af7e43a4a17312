import copy

import pytest
import torch

from lmlab.finetune import (EWC, MIGU, EWCConfig, HalfFineTuning, HFTConfig, MIGUConfig, RegularizedObjective,
                            SFTData, SFTObjective, fisher_diagonal, hft_groups, interpolate_weights, mix_replay)
from lmlab.train.config import TrainConfig
from lmlab.train.loop import Trainer


def _cfg(tmp_path, steps=4):
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.run.max_steps, cfg.run.out_dir = 2, steps, str(tmp_path)
    cfg.run.device, cfg.run.progress, cfg.run.ckpt_every, cfg.run.eval_every = "cpu", False, 0, 0
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay = 1e-2, 0, 0.1
    return cfg


def test_hft_freezes_exactly_half_of_every_group(tiny):
    hft = HalfFineTuning(HFTConfig(seed=3))
    frozen = hft.select(tiny, stage=0)
    groups = hft_groups(tiny)
    assert set(groups) == {"layer0.attn", "layer1.attn", "ffn", "norms"}
    for g, units in groups.items():
        n_frozen = sum(all(n in frozen for n in u) for u in units)
        assert n_frozen == len(units) // 2, g
        assert all(all(n in frozen for n in u) or not any(n in frozen for n in u) for u in units)
    params = dict(tiny.named_parameters())
    assert all(not params[n].requires_grad for n in frozen)
    assert params["embed.weight"].requires_grad  # others="train"
    other = hft.select(tiny, stage=1)
    assert other != frozen  # re-selected per stage (seeded)


def test_hft_frozen_params_unchanged_after_steps(tok, tiny, convs, tmp_path):
    data = SFTData(convs * 2, tok, block_size=128)
    hft = HalfFineTuning(HFTConfig(stage_steps=2, seed=0))
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    stages = []
    orig = hft.select
    hft.select = lambda m, stage=0: stages.append((stage, set(orig(m, stage)))) or stages[-1][1]
    trainer = Trainer(tiny, _cfg(tmp_path, steps=2), data, objective=SFTObjective(), callbacks=[hft])
    trainer.fit()
    assert [s for s, _ in stages] == [0]
    frozen = stages[0][1]
    for n, p in tiny.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), n  # no update, no weight decay
        else:
            assert not torch.equal(p, before[n]), n


def test_hft_stages_follow_the_trainers_optimizer_steps(tok, tiny, convs, tmp_path):
    # a new stage every stage_steps optimizer steps, counted by the Trainer (not from forward calls, so
    # grad_accum and evaluation forwards cannot shift it, and a resumed run continues the right stage)
    data = SFTData(convs * 4, tok, block_size=128, pack=False)
    hft = HalfFineTuning(HFTConfig(stage_steps=2, seed=0))
    seen = []
    orig = hft.select
    hft.select = lambda m, stage=0: seen.append(stage) or orig(m, stage)
    cfg = _cfg(tmp_path, steps=5)
    cfg.data.grad_accum, cfg.run.eval_every, cfg.run.ckpt_every = 2, 1, 3
    val = [next(data.batches(2))]
    Trainer(tiny, cfg, data, val, objective=SFTObjective(), callbacks=[hft]).fit(stop_at=3)
    assert seen == [0, 1]  # steps 0-1 stage 0, step 2 stage 1
    hft.finish(tiny)  # every weight trainable again, as a fresh process would load it
    assert all(p.requires_grad for p in tiny.parameters())
    resumed = HalfFineTuning(HFTConfig(stage_steps=2, seed=0))
    again = []
    orig2 = resumed.select
    resumed.select = lambda m, stage=0: again.append(stage) or orig2(m, stage)
    Trainer(tiny, cfg, data, val, objective=SFTObjective(), callbacks=[resumed]).fit(resume=True)
    assert again == [1, 2]  # resumed at step 3 (stage 1), step 4 starts stage 2
    with pytest.raises(Exception, match="before_forward"):
        RegularizedObjective(SFTObjective(), hooks=[hft])  # HFT is a Trainer callback now


def test_ewc_penalty_zero_at_anchor_and_quadratic(tok, tiny, convs):
    data = SFTData(convs, tok, block_size=128)
    fisher = fisher_diagonal(tiny, data.batches(1), SFTObjective(), max_batches=3)
    assert all((f >= 0).all() for f in fisher.values()) and sum(float(f.sum()) for f in fisher.values()) > 0
    ewc = EWC(tiny, fisher, EWCConfig(lam=10.0))
    assert float(ewc.penalty(tiny).detach()) == 0.0
    with torch.no_grad():
        tiny.blocks[0].attn.q_proj.weight += 0.1
    f = fisher["blocks.0.attn.q_proj.weight"]
    assert float(ewc.penalty(tiny).detach()) == pytest.approx(0.5 * 10.0 * float(f.sum()) * 0.01, rel=1e-4)
    obj = RegularizedObjective(SFTObjective(), [ewc])
    batch = next(data.batches(1))
    loss, metrics = obj(tiny, batch)
    assert float(loss.detach()) == pytest.approx(float(metrics["task_loss"]) + float(metrics["ewc_penalty"]), rel=1e-6)


def test_migu_updates_only_top_magnitude_rows(tok, tiny, convs):
    data = SFTData(convs, tok, block_size=128)
    batch = next(data.batches(1))
    migu = MIGU(MIGUConfig(ratio=0.25)).attach(tiny)
    loss, _ = SFTObjective()(tiny, batch)
    loss.backward()
    w = tiny.blocks[0].mlp.up_proj.weight
    mask = migu.masks["blocks.0.mlp.up_proj"]
    assert int(mask.sum()) == round(0.25 * w.shape[0])
    assert (w.grad[~mask] == 0).all() and (w.grad[mask].abs().sum(1) > 0).all()
    migu.detach()
    tiny.zero_grad()
    SFTObjective()(tiny, batch)[0].backward()
    assert (w.grad != 0).sum(1).gt(0).sum() > int(mask.sum())  # detached: all rows get gradient


def test_interpolation_endpoints(tiny):
    base = copy.deepcopy(tiny)
    tuned = copy.deepcopy(tiny)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ft_sd = {k: v.clone() for k, v in tuned.state_dict().items()}
    x = torch.randint(0, tiny.config.vocab_size, (1, 12))
    m1 = copy.deepcopy(tuned)
    interpolate_weights(base, m1, 1.0)
    torch.testing.assert_close(m1(x), tuned(x), rtol=0, atol=0)
    m0 = copy.deepcopy(tuned)
    interpolate_weights(base, m0, 0.0)
    torch.testing.assert_close(m0(x), base(x), rtol=0, atol=0)
    half = interpolate_weights(base, copy.deepcopy(tuned), 0.5)
    k = "blocks.0.attn.q_proj.weight"
    torch.testing.assert_close(half[k], (base.state_dict()[k] + ft_sd[k]) / 2)


def test_mix_replay_ratio():
    rows = mix_replay(list(range(30)), ["old"] * 5, ratio=0.25)
    assert len(rows) == 40 and rows.count("old") == 10


def test_hierarchical_importance(tok, tiny, convs):
    from lmlab.finetune.hierarchical import HierarchicalImportance, HLERConfig, record_si_importance

    data = SFTData(convs, tok, block_size=128)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    omega = record_si_importance(tiny, data.batches(1), SFTObjective(), steps=3, lr=1e-2)
    assert all((w >= 0).all() for w in omega.values()) and sum(float(w.sum()) for w in omega.values()) > 0
    assert not torch.equal(before["blocks.0.attn.q_proj.weight"], tiny.blocks[0].attn.q_proj.weight)
    reg = HierarchicalImportance(tiny, omega, HLERConfig(lam=2.0))
    assert float(reg.penalty(tiny).detach()) == 0.0
    with torch.no_grad():
        for p in tiny.parameters():
            p.add_(0.01)
    pen = reg.penalty(tiny)
    w = reg.last_layer_weights
    assert set(w) >= {"blocks.0", "blocks.1", "embed"} and sum(w.values()) == pytest.approx(len(w))
    losses = {k: float(v.detach()) for k, v in reg.layer_losses(tiny).items()}
    assert float(pen.detach()) == pytest.approx(2.0 * sum(w[k] * losses[k] for k in w), rel=1e-5)
    pen.backward()  # differentiable
