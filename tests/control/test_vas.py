"""VAS: TD(lambda) targets, the cached batched processor against the formula recomputed from scratch, the
zero-beta invariant, and a fitted value estimator raising a reward the base model rarely earns."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.control import VAS, ValueModel, fit_value_model
from lmlab.control.vas import td_lambda_targets
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.core.processors import StatefulProcessor

V = 40
PROMPTS = [[3, 9, 4, 22, 7], [11], [5, 5, 30, 1, 17, 30, 8]]  # uneven, one of a single token
GOOD = list(range(30, 40))  # the reward: share of response tokens in 30..39


def tiny(seed: int, d: int = 32, layers: int = 2) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=d, n_layers=layers, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(cfg).init_weights(std=0.3, seed=seed)


def reward(prompt, response) -> float:
    return sum(t in GOOD for t in response) / max(1, len(response))


@pytest.fixture(scope="module")
def base():
    return tiny(0, d=64)


def test_td_lambda_targets():
    values = torch.tensor([[0.1, 0.4, 0.2, 9.0], [0.3, 0.5, 0.0, 0.0]])
    reward_ = torch.tensor([1.0, -1.0])
    n = torch.tensor([4, 2])
    mc = td_lambda_targets(values, reward_, n, lam=1.0)
    torch.testing.assert_close(mc, torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, 0.0, 0.0]]))
    td0 = td_lambda_targets(values, reward_, n, lam=0.0)  # one-step bootstrap; the last state gets R
    torch.testing.assert_close(td0, torch.tensor([[0.4, 0.2, 9.0, 1.0], [0.5, -1.0, 0.0, 0.0]]))
    half = td_lambda_targets(values, reward_, n, lam=0.5)
    g2 = 0.5 * 9.0 + 0.5 * 1.0
    g1 = 0.5 * 0.2 + 0.5 * g2
    torch.testing.assert_close(half[0], torch.tensor([0.5 * 0.4 + 0.5 * g1, g1, g2, 1.0]))


class Recorder(StatefulProcessor):
    def __init__(self) -> None:
        self.seen = []

    def step(self, ids, logits, info):
        self.seen.append((ids.clone(), logits.clone(), info.prompt_lengths.clone(), info.new_tokens.clone()))
        return logits


@torch.no_grad()
@pytest.mark.parametrize("beta", [0.7, 3.0])
def test_cached_batched_vas_equals_formula(base, beta):
    vm = ValueModel(tiny(1, d=16), seed=2)  # a value estimator a quarter of the base's width
    with torch.no_grad():
        vm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    before, after = Recorder(), Recorder()
    generate(base, PROMPTS, max_new_tokens=5, temperature=1.0, seed=4, stop_token_ids=[],
             logits_processors=[before, VAS(vm, beta=beta, top_k=6, base=base), after])
    assert len(before.seen) == 5
    for (ids, logits, plen, new), (_, out, _, _) in zip(before.seen, after.seen):
        for b in range(ids.shape[0]):
            n = int(plen[b] + new[b])
            seq = ids[b, ids.shape[1] - n:]  # strip left padding
            top = logits[b].topk(6).indices
            cand = torch.cat([seq.expand(6, -1), top[:, None]], dim=1)  # [6, n + 1], no cache
            v = vm(cand)[:, -1]
            expected = logits[b].clone()
            expected[top] += beta * (v - v.mean())
            torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-4)
            assert not torch.allclose(out[b], logits[b])


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=20, seed=3)])
def test_zero_beta_reproduces_base(base, sampling):
    vm = ValueModel(tiny(1, d=16))
    with torch.no_grad():
        vm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    plain = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], **sampling)
    zero = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], logits_processors=[VAS(vm, beta=0.0)],
                    **sampling)
    strong = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], logits_processors=[VAS(vm, beta=50.0)],
                      **sampling)
    assert zero == plain
    assert strong != plain


def test_fitted_value_raises_the_reward(base):
    torch.manual_seed(0)
    prompts = [[int(t) for t in torch.randint(0, 30, (4,), generator=torch.Generator().manual_seed(i))]
               for i in range(16)]
    vm = ValueModel(tiny(5, d=32, layers=1))
    report = fit_value_model(vm, base, prompts, reward, samples_per_prompt=4, max_new_tokens=8, epochs=30,
                             lr=3e-3, seed=1)
    assert report.samples == 64 and report.loss_last < report.loss_first
    held = [[int(t) for t in torch.randint(0, 30, (4,), generator=torch.Generator().manual_seed(100 + i))]
            for i in range(16)]

    def rate(procs):
        outs = generate(base, held, max_new_tokens=8, temperature=1.0, seed=7, num_samples=2, stop_token_ids=[],
                        logits_processors=procs)
        return sum(reward(None, o[4:]) for o in outs) / len(outs)

    plain, steered = rate([]), rate([VAS(vm, beta=30.0, top_k=10)])  # measured 0.238 -> 0.406
    assert steered > plain + 0.1, (plain, steered)


def test_errors(base):
    vm = ValueModel(tiny(1, d=16))
    with pytest.raises(LmlabError, match="beta must be finite"):
        VAS(vm, beta=float("nan"))
    with pytest.raises(LmlabError, match="top_k must be >= 1"):
        VAS(vm, top_k=0)
    other = ValueModel(Transformer(ModelConfig.llama_like(vocab_size=V + 2, d_model=16, n_layers=1, n_heads=4,
                                                          max_seq_len=64)))
    with pytest.raises(LmlabError, match="share one tokenizer"):
        VAS(other, base=base)
    with pytest.raises(LmlabError, match="td_lambda"):
        fit_value_model(vm, base, PROMPTS, reward, td_lambda=1.5)
