"""Hook points, partial forwards and the KV cache object, on a small random Llama-style model."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.core.cache import CachePolicy
from lmlab.core.config import ModelConfig
from lmlab.core.hooks import BLOCK_HOOKS
from lmlab.core.model import Transformer


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.llama_like(vocab_size=50, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(cfg).init_weights(seed=0)


def ids(B=2, T=10, seed=0):
    return torch.randint(0, 50, (B, T), generator=torch.Generator().manual_seed(seed))


def test_every_hook_name_exists_for_every_layer(model):
    names = set(model.hook_points)
    for i in range(3):
        assert {f"blocks.{i}.{h}" for h in BLOCK_HOOKS} <= names
    assert {"embed", "ln_final", "logits"} <= names


def test_run_with_cache_shapes_and_only_requested(model):
    x = ids()
    logits, acts = model.run_with_cache(x, names=["blocks.1.attn.pattern", r"blocks\.\d\.mlp\.post", "blocks.0.attn.k"])
    assert set(acts) == {"blocks.1.attn.pattern", "blocks.0.mlp.post", "blocks.1.mlp.post", "blocks.2.mlp.post",
                         "blocks.0.attn.k"}
    assert acts["blocks.1.attn.pattern"].shape == (2, 4, 10, 10)
    torch.testing.assert_close(acts["blocks.1.attn.pattern"].sum(-1), torch.ones(2, 4, 10))
    assert torch.all(acts["blocks.1.attn.pattern"].triu(1) == 0)  # causal
    assert acts["blocks.0.attn.k"].shape == (2, 10, 2, 8)
    assert acts["blocks.0.mlp.post"].shape == (2, 10, model.config.d_mlp)
    torch.testing.assert_close(logits, model(x))  # the eager path (pattern hook) equals SDPA
    assert not any(p.active for p in model.hook_points.values())


def test_hooks_are_removed_even_on_error_and_unknown_names_raise(model):
    def boom(x, name):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with model.hooks([("blocks.0.resid_post", boom)]):
            model(ids())
    assert not model.hook_points["blocks.0.resid_post"].active
    with pytest.raises(LmlabError, match="unknown hook point 'blocks.0.resid_postt'"):
        with model.hooks([("blocks.0.resid_postt", boom)]):
            pass


def test_zero_hook_equals_base_and_a_real_edit_changes_output(model):
    x = ids()
    base = model(x)
    with model.hooks([("blocks.1.resid_post", lambda t, n: t + 0.0)]):
        torch.testing.assert_close(model(x), base)
    with model.hooks([("blocks.1.resid_post", lambda t, n: t + 1.0)]):
        assert (model(x) - base).abs().max() > 1e-3


def test_start_and_stop_at_layer_compose_to_full_forward(model):
    x = ids()
    mid = model(x, stop_at_layer=2)
    assert mid.shape == (2, 10, 32)
    torch.testing.assert_close(model(residual=mid, start_at_layer=2), model(x))
    _, acts = model.run_with_cache(x, names=["blocks.2.resid_pre"])
    torch.testing.assert_close(mid, acts["blocks.2.resid_pre"])
    with pytest.raises(LmlabError):
        model(x, stop_at_layer=4)


def test_fork_gives_independent_continuations(model):
    x = ids(B=1, T=8)
    cache = model.new_cache(1, 16)
    model(x, cache=cache)
    other = cache.fork()
    a = model(torch.tensor([[3]]), cache=cache)
    b = model(torch.tensor([[3]]), cache=other)
    torch.testing.assert_close(a, b)
    c = model(torch.tensor([[4]]), cache=other)
    torch.testing.assert_close(c, model(torch.cat([x, torch.tensor([[3, 4]])], 1))[:, -1:], atol=1e-5, rtol=1e-5)
    repeated = cache.fork(repeats=3)
    assert repeated.k.shape[1] == 3 and repeated.n_slots.tolist() == [9, 9, 9]


def test_reset_then_reuse_equals_fresh(model):
    x = ids(B=1, T=6)
    cache = model.new_cache(1, 16)
    model(ids(B=1, T=5, seed=9), cache=cache)
    cache.reset()
    torch.testing.assert_close(model(x, cache=cache), model(x))


class RecordingPolicy(CachePolicy):
    needs_attention = True

    def __init__(self):
        self.seen = []

    def observe(self, cache, layer, probs):
        self.seen.append((layer, tuple(probs.shape)))


def test_keep_everything_policy_equals_plain_cache_and_policy_sees_attention(model):
    x = ids(B=1, T=8)
    plain = model.new_cache(1, 16)
    policy = RecordingPolicy()
    observed = model.new_cache(1, 16, policy=policy)
    a = model(x, cache=plain)
    b = model(x, cache=observed)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert policy.seen == []  # the cache works on its own copy of the policy (issue 10 item 6)
    assert observed.policy.seen[:3] == [(0, (1, 4, 8, 8)), (1, (1, 4, 8, 8)), (2, (1, 4, 8, 8))]


def test_compact_keeps_positions_and_masks_evicted_tokens(model):
    # Evict the middle of the prompt; the result must equal attention over the kept tokens only.
    x = ids(B=1, T=8)
    cache = model.new_cache(1, 16)
    model(x, cache=cache)
    keep = torch.tensor([[0, 1, 5, 6, 7]])
    cache.compact(keep)
    assert cache.n_slots.tolist() == [5] and cache.next_pos.tolist() == [8]
    assert cache.slot_pos[0, :5].tolist() == [0, 1, 5, 6, 7]
    out = model(torch.tensor([[11]]), cache=cache)
    assert torch.isfinite(out).all()


def test_cache_overflow_is_a_clear_error(model):
    cache = model.new_cache(1, 4)
    with pytest.raises(LmlabError, match="KV cache is full"):
        model(ids(B=1, T=5), cache=cache)
