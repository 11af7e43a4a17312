"""Block eviction (``slack``), rows independent of their batch mates, and hook masks after re-indexing."""

from __future__ import annotations

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.decoder import Decoder
from lmlab.core.hooks import current_context, hooks
from lmlab.core.model import Transformer
from lmlab.efficient import kv_policy
from lmlab.efficient.kv_policies import row_gumbel_noise
from lmlab.errors import LmlabError

V = 61


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    return Transformer(cfg).init_weights(std=0.2, seed=0).eval()


def _ids(B=1, T=12, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _feed(model, policy, tokens, prompt_len):
    """Teacher-forced: the prompt, then one token per step; yields the cache after every forward.

    Each forward has its own no_grad: a ``with no_grad()`` held open across ``yield`` leaks into the caller,
    and two such generators zipped together restore each other's state in the wrong order (grad mode stayed
    off for every later test in the process)."""
    cache = model.new_cache(1, tokens.shape[1] + 1, policy=policy)
    with torch.no_grad():
        model(tokens[:, :prompt_len], cache=cache)
    yield cache
    for t in range(prompt_len, tokens.shape[1]):
        with torch.no_grad():
            model(tokens[:, t:t + 1], cache=cache)
        yield cache


@pytest.mark.parametrize("name, opts", [("window", {}), ("sinks", dict(reindex=False)), ("sinks", {})],
                         ids=["window", "sinks-original-positions", "sinks-reindexed"])
def test_block_eviction_keeps_the_tokens_per_step_eviction_keeps(model, name, opts):
    """Budget 10, slack 5: between compactions the cache holds per-step eviction's tokens plus up to 5 newer
    ones; right after each compaction it holds exactly per-step eviction's tokens (compared by original
    position, and through layer 0's keys and values, which depend only on the token and its position)."""
    budget, slack = 10, 5
    tokens = _ids(T=60, seed=3)
    steps = zip(_feed(model, kv_policy(name, budget=budget, slack=0, **opts), tokens, 16),
                _feed(model, kv_policy(name, budget=budget, slack=slack, **opts), tokens, 16))
    compactions = 0
    for t, (step, block) in enumerate(steps):
        n_step, n_block = int(step.n_slots[0]), int(block.n_slots[0])
        assert n_step == budget and budget <= n_block <= budget + slack and block.capacity <= budget + slack + 1
        if n_block > budget:
            continue
        compactions += 1
        seen = 16 + t  # tokens fed so far
        kept = list(range(4)) if name == "sinks" else []
        kept += [p for p in range(seen - (budget - len(kept)), seen)]
        if opts.get("reindex", True) and name == "sinks":  # positions by place in the cache, both ways
            assert block.slot_pos[0, :budget].tolist() == step.slot_pos[0, :budget].tolist() == list(range(budget))
        else:
            assert block.slot_pos[0, :budget].tolist() == step.slot_pos[0, :budget].tolist() == kept
        torch.testing.assert_close(block.v[0, :, :, :budget], step.v[0, :, :, :budget], atol=0, rtol=0)
        # keys re-rotated once per block vs once per step: equal up to the rotation's rounding
        torch.testing.assert_close(block.k[0, :, :, :budget], step.k[0, :, :, :budget], atol=1e-5, rtol=1e-5)
    assert compactions >= 7  # 44 decode steps / (slack + 1)


def test_block_eviction_changes_nothing_while_the_budget_is_not_exceeded(model):
    """Budget >= the whole sequence: the default slack keeps the plain cache's logits bit for bit."""
    tokens = _ids(T=30, seed=4)
    plain = [c.k.clone() for c in _feed(model, None, tokens, 10)]
    for name in ("window", "sinks", "h2o", "keyformer"):
        got = [c.k.clone() for c in _feed(model, kv_policy(name, budget=31), tokens, 10)]
        assert all(torch.equal(a[..., :20, :], b[..., :20, :]) for a, b in zip(plain, got))


def test_slack_is_validated():
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(LmlabError, match="slack must be a non-negative number of tokens or None"):
            kv_policy("h2o", budget=8, slack=bad)
    assert kv_policy("window", budget=80).slack is None
    policy = kv_policy("window", budget=80)
    policy.tokens = 80
    assert policy.slack_tokens() == 10  # an eighth of the budget by default


# -- a row's selection does not depend on its batch mates ------------------------------------------------------
def _run_rows(model, prompts, name, steps=7):
    """Greedy decode ``steps`` tokens for ``prompts`` in one batch; per row: head_pos, scores, tokens."""
    dec = Decoder(model, max_len=40, cache_policy=kv_policy(name, budget=8, slack=0))
    dec.add(prompts, max_new_tokens=steps + 1, stop_token_ids=[])
    tokens = [dec.step().tokens for _ in range(steps)]
    cache = dec.cache
    return cache.head_pos, cache.policy.score, torch.stack(tokens, 1)


@pytest.mark.parametrize("name", ["keyformer", "h2o"])
def test_a_rows_selection_equals_that_row_run_alone(model, name):
    """Uneven prompts (17 and 11 tokens, budget 8): each row's kept tokens per layer and head and its
    accumulated scores equal those of the row decoded alone (Keyformer's noise is drawn per row; the padded
    queries of the shorter row's prefill add nothing)."""
    prompts = [_ids(T=17, seed=5)[0].tolist(), _ids(T=11, seed=6)[0].tolist()]
    pos, score, toks = _run_rows(model, prompts, name)
    for b, p in enumerate(prompts):
        pos_b, score_b, toks_b = _run_rows(model, [p], name)
        assert torch.equal(toks[b], toks_b[0])
        assert torch.equal(pos[:, b, :, :8], pos_b[:, 0, :, :8]), (name, b)  # budget 8: slots 0..7
        torch.testing.assert_close(score[:, b, :, :8], score_b[:, 0, :, :8], atol=1e-5, rtol=1e-5)


def test_a_row_joining_a_running_batch_keeps_its_own_keyformer_temperature(model):
    """Keyformer's temperature rises per generation step of *each row*: a row added to a batch that has
    already decoded 4 steps starts at tau_init, so its kept tokens and accumulated scores equal those of the
    row decoded alone (a shared step counter gave it tau = 1.04 and other scores)."""
    first, late = _ids(T=15, seed=8)[0].tolist(), _ids(T=11, seed=6)[0].tolist()
    dec = Decoder(model, max_len=40, cache_policy=kv_policy("keyformer", budget=8, slack=0))
    dec.add([first], max_new_tokens=20, stop_token_ids=[])
    for _ in range(4):
        dec.step()
    dec.add([late], max_new_tokens=8, stop_token_ids=[])
    toks = torch.stack([dec.step().tokens for _ in range(5)], 1)  # [2, 5]
    assert dec.cache.policy.row_step.tolist() == [9, 5]
    pos_b, score_b, toks_b = _run_rows(model, [late], "keyformer", steps=5)
    assert torch.equal(toks[1], toks_b[0])
    assert torch.equal(dec.cache.head_pos[:, 1, :, :8], pos_b[:, 0, :, :8])
    torch.testing.assert_close(dec.cache.policy.score[:, 1, :, :8], score_b[:, 0, :, :8], atol=1e-5, rtol=1e-5)


def test_keyformer_counts_decode_steps_not_prompt_chunks(model):
    dec = Decoder(model, max_len=40, cache_policy=kv_policy("keyformer", budget=8, slack=0), prefill_chunk_size=4)
    dec.add([_ids(T=17, seed=5)[0].tolist()], max_new_tokens=6, stop_token_ids=[])
    dec.step()  # the prompt in 5 chunks (the last of one token), then at most one decode forward
    first = dec.cache.policy.row_step.tolist()
    for _ in range(3):
        dec.step()
    assert dec.cache.policy.row_step.tolist() == [first[0] + 3] and first[0] <= 1


def test_row_gumbel_noise_is_gumbel_and_a_function_of_its_inputs():
    q = torch.arange(3)[None].expand(2, 3)  # [B, T]
    k = torch.arange(4000).view(1, 1, 4000).expand(2, 2, 4000)  # [B, n_kv, S]
    g = row_gumbel_noise(0, 1, q, k, group=2)  # [2, 4, 3, 4000]
    assert g.shape == (2, 4, 3, 4000) and torch.isfinite(g).all()
    assert torch.equal(g[0], g[1])  # same inputs, same noise, whatever the row's index
    assert abs(float(g.mean()) - 0.5772) < 0.02 and abs(float(g.var()) - 1.6449) < 0.06  # Euler-Mascheroni, pi^2/6
    flat = g.flatten()
    assert float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]).__abs__() < 0.02  # neighbours independent
    assert not torch.equal(g, row_gumbel_noise(1, 1, q, k, group=2))
    assert not torch.equal(g[:, :, 1], g[:, :, 0]) and not torch.equal(g[:, 0], g[:, 1])


# -- hooks see true token indices after StreamingLLM re-indexing -----------------------------------------------
def test_prompt_and_generated_masks_use_true_indices_after_sinks_reindexing(model):
    """Budget 6 under a 12-token prompt: after the eviction the cache positions restart at 6, below the
    prompt length; the hooks' masks must still call every decoded token generated."""
    seen = []

    def record(x, name):
        ctx = current_context()
        seen.append((ctx.phase, ctx.prompt_mask().clone(), ctx.positions.clone(), ctx.token_index.clone()))

    dec = Decoder(model, max_len=40, cache_policy=kv_policy("sinks", budget=6, slack=0))
    with hooks(model, [("blocks.0.resid_pre", record)]):
        dec.add([_ids(T=12, seed=7)[0].tolist()], max_new_tokens=6, stop_token_ids=[])
        while dec.num_active:
            dec.step()
    prefill, decode = seen[0], seen[1:]
    assert prefill[0] == "prefill" and bool(prefill[1].all())
    assert len(decode) == 5 and all(phase == "decode" for phase, *_ in decode)
    assert [int(pos) for _, _, pos, _ in decode] == [6] * 5  # the paper's positions: place in the cache
    assert [int(idx) for _, _, _, idx in decode] == list(range(12, 17))  # true indices
    assert not any(bool(mask.any()) for _, mask, _, _ in decode)
