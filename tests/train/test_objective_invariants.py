"""Every registered objective through the family invariant: gradient accumulation == one large batch, on rows
with very uneven loss-unit counts (3, 3, 58, 58 target tokens). Each objective's ``loss_units`` must say
what its loss averages over, or accumulation silently re-weights rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmlab.train.loop import Trainer
from lmlab.train.objective_registry import BUILTIN_OBJECTIVES, build_objective

sys.path.insert(0, str(Path(__file__).parent))
from uneven_sft import config, uneven_model, uneven_rows  # noqa: E402


class Rows:
    def __init__(self, rows):
        self.rows = rows

    def batches(self, n):
        while True:
            for i in range(0, 4, n):
                yield {k: v[i:i + n] for k, v in self.rows.items()}


def _setup(name):
    """(model, rows, objective) for one registered objective."""
    rows = uneven_rows()
    model = uneven_model()
    if name in ("causal_lm", "sft"):
        return model, rows, build_objective(name)
    if name == "sft_regularized":
        from lmlab.finetune import EWC, EWCConfig, SFTObjective

        gen = torch.Generator().manual_seed(1)
        fisher = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
        with torch.no_grad():  # start away from the anchor, so the penalty has a gradient
            ewc = EWC(model, fisher, EWCConfig(lam=10.0))
            for p in model.parameters():
                p.add_(0.01)
        return model, rows, build_objective(name, {"base": SFTObjective(), "regularizers": [ewc]})
    if name == "balora":
        from lmlab.peft import BALoRAConfig, add_adapter

        torch.manual_seed(0)  # the adapter's random init: the same in both runs
        add_adapter(model, BALoRAConfig(r=4, init_b="random", lambda1=0.1, lambda2=0.1, lambda3=0.0))
        # lambda3 = 0: the SVD term is a ratio of singular values of the micro-batch's [tokens, V] logit
        # matrix, which no per-micro-batch weighting can make equal to the large batch's
        return model, rows, build_objective(name)
    if name == "classify":
        from lmlab.finetune import ClassifierConfig, SequenceClassifier

        torch.manual_seed(0)  # the head's init
        labels = torch.where(rows["labels"] == -100, rows["labels"], rows["labels"] % 3)  # 3 token classes
        return (SequenceClassifier(model, ClassifierConfig(n_labels=3, token_level=True)),
                {"input_ids": rows["input_ids"], "labels": labels}, build_objective(name))
    if name in ("dpo", "reward", "haf_rm"):  # preference pairs: responses of 3, 3, 58 and 58 tokens
        from lmlab.align.preference_data import PreferenceData, TokenizedPair

        gen = torch.Generator().manual_seed(2)
        draw = lambda n: torch.randint(1, model.config.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
        pairs = [TokenizedPair(draw(4), draw(n), draw(max(1, n - 2))) for n in (3, 3, 58, 58)]
        data = PreferenceData(pairs, pad_token_id=0, shuffle=False)
        if name == "dpo":
            import copy

            reference = copy.deepcopy(model)
            with torch.no_grad():  # the policy starts away from its reference, as after a few steps
                for p in model.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen))
            return model, data, build_objective(name, {"reference_model": reference})
        from lmlab.align.reward import reward_model

        return reward_model(model, seed=0), data, build_objective(name)
    raise AssertionError(f"no invariant setup for objective {name!r}: add one")


def _grads(tmp_path, name, accum):
    model, rows, objective = _setup(name)
    data = rows if hasattr(rows, "batches") else Rows(rows)
    trainer = Trainer(model, config(tmp_path / f"{name}-{accum}", accum), data, objective=objective)
    grads = {}
    step = trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = capture
    trainer.fit()
    return trainer.step_losses[0], grads


@pytest.mark.parametrize("name", sorted(BUILTIN_OBJECTIVES))
def test_grad_accumulation_equals_large_batch_for_every_objective(tmp_path, name):
    loss1, g1 = _grads(tmp_path, name, 1)
    loss2, g2 = _grads(tmp_path, name, 2)  # micro-batches (3, 3) and (58, 58) target tokens
    assert abs(loss1 - loss2) <= 1e-5 * max(1.0, abs(loss1)), (loss1, loss2)
    assert g1 and g1.keys() == g2.keys()
    scale = max(float(g.abs().max()) for g in g1.values())
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=1e-4, atol=1e-6 * max(scale, 1.0), msg=f"{name}: {n}")
