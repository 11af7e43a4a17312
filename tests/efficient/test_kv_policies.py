"""KV eviction policies: every policy through the family's invariants, then what each one keeps."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.efficient import kv_policy
from lmlab.efficient.kv_registry import available_policies
from lmlab.errors import LmlabError

POLICIES = ["window", "sinks", "h2o", "keyformer"]


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.llama_like(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    return Transformer(cfg).init_weights(std=0.2, seed=0)


def _ids(B=2, T=12, seed=0):
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(seed))


def _decode(model, prompt, steps, policy=None):
    """Logits of the prompt's last token and of each fed token [B, steps + 1, V], plus the cache."""
    torch.manual_seed(0)
    B, T = prompt.shape
    feed = _ids(B, steps, seed=5)
    cache = model.new_cache(B, T + steps, policy=policy)
    with torch.no_grad():
        out = [model(prompt, cache=cache)[:, -1:]]
        for t in range(steps):
            out.append(model(feed[:, t:t + 1], cache=cache))
    return torch.cat(out, 1), cache, torch.cat([prompt, feed], 1)


def test_registry_lists_every_policy():
    assert available_policies() == sorted(POLICIES)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("budget", [1.0, 40])
def test_budget_at_least_the_sequence_equals_the_plain_cache_exactly(model, name, budget):
    """budget 1.0 or >= capacity: the policy never evicts, needs no scores, and changes no bit."""
    prompt = _ids(T=12)
    plain, _, _ = _decode(model, prompt, 28)
    got, cache, _ = _decode(model, prompt, 28, kv_policy(name, budget=budget))
    assert torch.equal(got, plain)
    assert cache.n_slots.tolist() == [40, 40]
    ref = lmlab.generate(model, prompt, max_new_tokens=10)
    assert torch.equal(lmlab.generate(model, prompt, max_new_tokens=10, cache_policy=kv_policy(name, budget=budget)),
                       ref)


@pytest.mark.parametrize("name", POLICIES)
def test_budget_not_reached_keeps_outputs_with_scores_on(model, name):
    """Capacity 40, budget 39: the policy is active (scoring ones take the eager attention path), but evicts
    only after the last forward: same logits up to the eager path's rounding."""
    prompt = _ids(T=12)
    plain, _, _ = _decode(model, prompt, 28)
    policy = kv_policy(name, budget=39, slack=0)
    got, cache, _ = _decode(model, prompt, 28, policy)
    assert policy.active and cache.n_slots.tolist() == [39, 39]
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("budget", [10, 0.5])
def test_memory_is_bounded_by_the_budget(model, name, budget):
    prompt = _ids(T=20)
    opts = {"reindex": False} if name == "sinks" else {}  # original positions (re-indexing: test_kv_fidelity.py)
    _, cache, _ = _decode(model, prompt, 15, kv_policy(name, budget=budget, slack=0, **opts))
    kept = 10
    assert cache.n_slots.tolist() == [kept, kept]
    assert cache.next_pos.tolist() == [35, 35]
    pos = cache.slot_pos[:, :kept]
    assert (pos >= 0).all() and (pos.diff(dim=1) > 0).all()  # distinct real tokens in order
    assert (pos[:, -1] == 34).all()  # the newest token is always kept


def test_window_equals_sliding_window_attention(model):
    """Evicting (slack=0: the paper's per-step eviction) all but the W newest tokens after each step == attention limited to W + 1 keys (itself and
    the W before it), which a sliding-window config computes without any cache."""
    W = 9
    prompt = _ids(T=W)  # the prompt fits the window: prefill attention is plain causal in both
    got, _, full = _decode(model, prompt, 20, kv_policy("window", budget=W, slack=0))
    windowed = Transformer(model.config.replace(sliding_window=W + 1))
    windowed.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = windowed(full)[:, W - 1:]
        plain = model(full)[:, W - 1:]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got[:, -1] - plain[:, -1]).abs().max() > 1e-3  # eviction really changed the output


def test_sinks_keep_the_first_tokens_and_the_most_recent(model):
    _, cache, _ = _decode(model, _ids(T=20), 10, kv_policy("sinks", budget=12, n_sinks=4, reindex=False, slack=0))
    assert cache.slot_pos[:, :12].tolist() == [list(range(4)) + list(range(22, 30))] * 2
    _, cache, _ = _decode(model, _ids(T=20), 10, kv_policy("sinks", budget=12, n_sinks=4, slack=0))
    assert cache.slot_pos[:, :12].tolist() == [list(range(12))] * 2  # the paper's positions: place in the cache
    assert cache.next_pos.tolist() == [12, 12]


def test_h2o_keeps_the_recent_half_and_the_heaviest_attention_receivers(model):
    """per_head=False, after a 24-token prompt with budget 12: the 6 newest tokens, plus the 6 others that
    received the most attention summed over layers, heads and queries (computed independently, from pattern
    hooks). The per-head selection is tested in test_kv_fidelity.py."""
    prompt = _ids(B=1, T=24, seed=3)
    cache = model.new_cache(1, 24, policy=kv_policy("h2o", budget=12, per_head=False))
    with torch.no_grad():
        model(prompt, cache=cache)
        _, acts = model.run_with_cache(prompt, names=[r"blocks\.\d+\.attn\.pattern"])
    received = sum(a.sum(dim=(1, 2)) for a in acts.values())[0]  # [24]
    heavy = received[:18].topk(6).indices.sort().values.tolist()
    assert cache.slot_pos[0, :12].tolist() == heavy + list(range(18, 24))


def test_keyformer_keeps_a_recent_window_and_is_reproducible(model):
    prompt = _ids(T=30, seed=4)
    runs = [_decode(model, prompt, 10, kv_policy("keyformer", budget=10, seed=s)) for s in (0, 0, 1)]
    (a, ca, _), (b, cb, _), (_, cc, _) = runs
    assert torch.equal(a, b) and torch.equal(ca.slot_pos, cb.slot_pos)  # seeded Gumbel noise
    pos = ca.slot_pos[:, :10]
    assert (pos[:, -3:] == torch.arange(37, 40)).all()  # recent window: 30% of 10
    # the noise matters: another seed or plain accumulated attention (H2O) keep other tokens somewhere
    _, ch, _ = _decode(model, prompt, 10, kv_policy("h2o", budget=10, recent_share=0.3))
    assert not (torch.equal(ca.slot_pos, cc.slot_pos) and torch.equal(ca.slot_pos, ch.slot_pos))


def test_policies_work_as_cache_policy_in_generate_with_uneven_prompts(model):
    prompts = [_ids(1, 14, seed=1)[0].tolist(), _ids(1, 9, seed=2)[0].tolist()]
    for name in POLICIES:
        out = lmlab.generate(model, prompts, max_new_tokens=12, cache_policy=kv_policy(name, budget=8))
        assert [len(o) for o in out] == [26, 21]


@pytest.mark.parametrize("name, kwargs, match", [
    ("window", dict(budget=0), "budget must be at least 1 token, got 0"),
    ("h2o", dict(budget=0.0), r"fractional budget must lie in \(0, 1\]"),
    ("keyformer", dict(budget=1.5), r"fractional budget must lie in \(0, 1\]"),
    ("sinks", dict(budget=4), "leaves no room for recent tokens"),
    ("lru", dict(budget=4), "unknown KV policy 'lru' .*available: h2o, keyformer, sinks, window"),
    ("window", dict(budget="10"), "budget must be a number"),
])
def test_bad_policy_arguments_are_one_line_errors(name, kwargs, match):
    with pytest.raises(LmlabError, match=match) as err:
        kv_policy(name, **kwargs)
    assert "\n" not in str(err.value)
