"""KV policies against the papers' definitions: per-layer/per-head selection (H2O, Keyformer), StreamingLLM's
positions by place in the cache, and memory bounded during prefill (chunked prefill + eviction per chunk)."""

from __future__ import annotations

import pytest
import torch

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.decoder import Decoder
from lmlab.core.model import Transformer
from lmlab.efficient import kv_policy

POLICIES = ["window", "sinks", "h2o", "keyformer"]
V = 61


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)
    return Transformer(cfg).init_weights(std=0.2, seed=0)


@pytest.fixture(scope="module")
def one_layer():
    """One layer: a cached key depends only on its token and position, so a recomputation from the kept
    tokens alone is the exact reference for what the cache should hold."""
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=256)
    return Transformer(cfg).init_weights(std=0.3, seed=1)


def _ids(B=1, T=12, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -- budget >= sequence: exactly the plain cache, one-shot and chunked prefill ---------------------------------
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("chunk", [None, 5])
def test_a_budget_covering_the_sequence_equals_the_plain_cache_bit_for_bit(model, name, chunk):
    prompts = [_ids(T=23, seed=1)[0].tolist(), _ids(T=9, seed=2)[0].tolist()]
    kw = dict(max_new_tokens=9, stop_token_ids=[], prefill_chunk_size=chunk)
    ref = lmlab.generate(model, prompts, **kw)
    for budget in (1.0, 32, 500):  # max_len is 23 + 9 = 32
        assert lmlab.generate(model, prompts, cache_policy=kv_policy(name, budget=budget), **kw) == ref


# -- per-layer, per-head selection ------------------------------------------------------------------------------
def _per_head_expected(model, prompt, budget, recent):
    """H2O's selection from the attention patterns (hooks on a cache-free forward): per layer and KV head,
    the ``recent`` newest tokens + the heaviest of the others by attention summed over queries and the query
    heads that share the KV head."""
    T = prompt.shape[1]
    _, acts = model.run_with_cache(prompt, names=[r"blocks\.\d+\.attn\.pattern"])
    c = model.config
    out = []
    for layer in range(c.n_layers):
        pattern = acts[f"blocks.{layer}.attn.pattern"][0]  # [H, T, T]
        received = pattern.sum(dim=1).view(c.kv_heads, c.n_heads // c.kv_heads, T).sum(1)  # [n_kv, T]
        heavy = received[:, :T - recent].topk(budget - recent, dim=-1).indices.sort(dim=-1).values
        out.append([h + list(range(T - recent, T)) for h in heavy.tolist()])
    return out


def test_h2o_selects_per_layer_and_per_head(model):
    prompt = _ids(T=30, seed=3)
    cache = model.new_cache(1, 40, policy=kv_policy("h2o", budget=12))
    plain = model.new_cache(1, 40)
    with torch.no_grad():
        model(prompt, cache=cache)
        model(prompt, cache=plain)
        expected = _per_head_expected(model, prompt, 12, 6)
    held = cache.head_pos[:, 0, :, :12].tolist()  # [L, n_kv, 12]
    assert held == expected
    assert len({tuple(h) for layer in held for h in layer}) > 1  # heads really keep different tokens
    for layer in range(2):  # each head's slots hold that head's keys/values of those tokens
        for h in range(2):
            idx = torch.tensor(expected[layer][h])
            # (layer 1's keys differ in rounding only: the scoring cache took the eager attention path)
            torch.testing.assert_close(cache.k[layer, 0, h, :12], plain.k[layer, 0, h, idx], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cache.v[layer, 0, h, :12], plain.v[layer, 0, h, idx], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["h2o", "keyformer"])
def test_decoding_over_a_per_head_cache_equals_attention_masked_per_head(model, name):
    """After eviction, the next token's logits == a plain cache whose attention pattern is restricted, head by
    head, to the tokens that head kept (renormalised): the per-head gather matches a per-head mask."""
    prompt, nxt = _ids(T=30, seed=4), torch.tensor([[7]])
    cache = model.new_cache(1, 40, policy=kv_policy(name, budget=12))
    with torch.no_grad():
        model(prompt, cache=cache)
        kept = cache.head_pos[:, 0, :, :12].clone()  # [L, n_kv, 12] positions per layer and head
        got = model(nxt, cache=cache)[:, -1]
    rep = model.config.n_heads // model.config.kv_heads

    def restrict(layer):
        def fn(p, name):  # p [1, H, 1, 31]: keep each head's tokens + the new one (position 30)
            allowed = torch.zeros_like(p, dtype=torch.bool)
            for h in range(p.shape[1]):
                allowed[0, h, :, kept[layer, h // rep]] = True
            allowed[..., 30] = True
            q = p.masked_fill(~allowed, 0.0)
            return q / q.sum(-1, keepdim=True)
        return fn

    plain = model.new_cache(1, 40)
    with torch.no_grad():
        model(prompt, cache=plain)
        with model.hooks([(f"blocks.{i}.attn.pattern", restrict(i)) for i in range(2)]):
            ref = model(nxt, cache=plain)[:, -1]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_per_head_selection_keeps_rows_independent_with_uneven_prompts(model):
    """Two prompts of different lengths in one batch (a ragged cache after per-head compaction) generate
    exactly what each generates alone (Keyformer: tests/efficient/test_kv_blocks.py)."""
    prompts = [_ids(T=26, seed=5)[0].tolist(), _ids(T=8, seed=6)[0].tolist()]
    for name in ("h2o", "window", "sinks"):
        batch = lmlab.generate(model, prompts, max_new_tokens=14, stop_token_ids=[],
                               cache_policy=kv_policy(name, budget=10))
        alone = [lmlab.generate(model, [p], max_new_tokens=14, stop_token_ids=[],
                                cache_policy=kv_policy(name, budget=10))[0] for p in prompts]
        assert batch == alone, name


# -- StreamingLLM: positions by place in the cache ------------------------------------------------------------
def test_sinks_reindex_equals_recomputing_at_the_papers_positions(one_layer):
    """Each decode step with sinks (4) + recent under budget 10: the logits equal a cache-free forward over
    the kept tokens (first 4 + most recent 6) and the new one at positions 0..10 — the paper's scheme. Keeping
    original positions (reindex=False) gives other logits, so the test can fail."""
    model, budget = one_layer, 10
    tokens = _ids(T=40, seed=7)[0]
    for reindex, should_match in ((True, True), (False, False)):
        cache = model.new_cache(1, 64, policy=kv_policy("sinks", budget=budget, reindex=reindex, slack=0))
        worst = 0.0
        with torch.no_grad():
            model(tokens[None, :12], cache=cache)  # a prompt longer than the budget, then 28 decode steps
            for t in range(12, 40):
                got = model(tokens[None, t:t + 1], cache=cache)[0, -1]
                kept = torch.cat([tokens[:4], tokens[t - (budget - 4):t], tokens[t:t + 1]])  # [11]
                ref = model(kept[None])[0, -1]  # positions 0..10
                worst = max(worst, float((got - ref).abs().max()))
        # re-rotation rounding accumulates over the steps (measured 1.1e-5 on logits up to 4.2); original positions: 5.8
        assert (worst < 1e-4) == should_match, (reindex, worst)
    assert cache.slot_pos[0, :budget].tolist() == list(range(4)) + list(range(34, 40))  # reindex=False


def test_sinks_reindex_streams_past_the_trained_context(model):
    """Positions never exceed budget: a 300-token stream through a model with max_seq_len 256 stays finite,
    and every cached position lies in 0..budget-1."""
    tokens = _ids(T=300, seed=8)
    dec = Decoder(model, max_len=320, cache_policy=kv_policy("sinks", budget=16), prefill_chunk_size=8)
    dec.add([tokens[0].tolist()], max_new_tokens=3, stop_token_ids=[])
    assert int(dec.cache.slot_pos.max()) < 16 and dec.cache.next_pos.tolist() == [16]
    while dec.num_active:
        dec.step()


# -- memory bounded during prefill -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("budget, tokens", [(12, 12), (0.25, 15)])
@pytest.mark.parametrize("slack", [0, 3])
def test_chunked_prefill_keeps_the_cache_within_budget_plus_one_chunk(model, name, budget, tokens, slack):
    """A 60-token prompt in chunks of 7: the allocation never exceeds budget + slack + 7 slots and every row
    holds at most budget + slack after each forward (a fraction is of the whole prompt, declared by the
    decoder); slack 0 is per-step eviction."""
    chunk, prompt = 7, _ids(T=60, seed=9)[0].tolist()
    seen = []
    dec = Decoder(model, max_len=80, cache_policy=kv_policy(name, budget=budget, slack=slack), prefill_chunk_size=chunk)
    dec.add([prompt], max_new_tokens=10, stop_token_ids=[])
    seen.append((dec.cache.capacity, int(dec.cache.n_slots.max())))
    while dec.num_active:
        dec.step()
        if dec.cache is not None:
            seen.append((dec.cache.capacity, int(dec.cache.n_slots.max())))
    assert all(cap <= tokens + slack + chunk for cap, _ in seen), seen
    assert all(n <= tokens + slack for _, n in seen), seen
    assert seen[0][1] <= tokens + slack and min(n for _, n in seen) == tokens


def test_one_shot_prefill_still_needs_room_for_the_whole_prompt(model):
    cache = model.new_cache(1, 80, policy=kv_policy("h2o", budget=12, slack=0))
    with torch.no_grad():
        model(_ids(T=60, seed=9), cache=cache)
    assert cache.capacity == 60 and cache.n_slots.tolist() == [12]
    with torch.no_grad():
        model(torch.tensor([[3]]), cache=cache)
    assert cache.capacity == 60 and cache.n_slots.tolist() == [12]


# -- re-rotation across rotary layouts and static scalings ------------------------------------------------------
@pytest.mark.parametrize("changes", [
    dict(),
    dict(rope_style="interleaved", rotary_dim=4),  # GPT-J: pairs, partial rotary
    dict(rope_scaling="linear", rope_scaling_params=(("factor", 2.0),)),
    dict(rope_scaling="yarn", rope_scaling_params=(("factor", 2.0), ("original_max_position_embeddings", 128))),
], ids=["llama", "gptj-partial", "linear", "yarn"])
def test_reposition_equals_caching_at_the_new_positions(changes):
    """Keys cached at positions 10..19 and re-positioned to 0..9 equal keys cached at 0..9 from the start
    (YaRN's attention factor on cos/sin is kept, not applied twice)."""
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                 max_seq_len=256).replace(**changes)
    model = Transformer(cfg).init_weights(std=0.2, seed=2)
    x = _ids(T=10, seed=11)
    moved, fresh = model.new_cache(1, 32), model.new_cache(1, 32)
    with torch.no_grad():
        model(x, cache=fresh)
        model(x, cache=moved, positions=torch.arange(10, 20)[None])
        moved.slot_pos[0, :10] = torch.arange(10, 20)  # what a cache that had seen 10 tokens before would hold
        moved.reposition(torch.where(moved.slot_pos >= 0, torch.arange(32), -1))
    torch.testing.assert_close(moved.k[0], fresh.k[0], atol=1e-5, rtol=1e-5)  # layer 0: same inputs
    assert moved.next_pos.tolist() == [10] and moved.slot_pos[0, :10].tolist() == list(range(10))


def test_per_head_and_reindex_limits_are_one_line_errors(model):
    from lmlab.errors import LmlabError

    windowed = Transformer(model.config.replace(sliding_window=8)).init_weights(std=0.2, seed=0)
    cache = windowed.new_cache(1, 40, policy=kv_policy("h2o", budget=6))
    with pytest.raises(LmlabError, match="per-head selection on a model with sliding-window layers") as err:
        with torch.no_grad():
            windowed(_ids(T=12), cache=cache)
    assert "\n" not in str(err.value)
    with torch.no_grad():  # the per-row selection works there
        windowed(_ids(T=12), cache=windowed.new_cache(1, 40, policy=kv_policy("h2o", budget=6, per_head=False)))
    gpt2 = Transformer(model.config.replace(pos_type="learned")).init_weights(std=0.2, seed=0)
    with pytest.raises(LmlabError, match="reindex=True needs rotary positions"):
        with torch.no_grad():
            gpt2(_ids(T=12), cache=gpt2.new_cache(1, 40, policy=kv_policy("sinks", budget=6, reindex=True)))
    with pytest.raises(LmlabError, match="reindex must be True, False or 'auto'"):
        kv_policy("sinks", budget=6, reindex="yes")
    with pytest.raises(LmlabError, match="per_head must be True or False"):
        kv_policy("h2o", budget=6, per_head=1)


def test_forking_a_scored_cache_repeats_its_accumulated_scores(model):
    """best-of-N forks the prefilled cache N ways: each sample starts from its prompt's H2O scores."""
    cache = model.new_cache(2, 40, policy=kv_policy("h2o", budget=12))
    with torch.no_grad():
        model(_ids(B=2, T=20, seed=12), cache=cache)
    forked = cache.fork(repeats=3)
    assert forked.policy.score.shape[1] == 6
    torch.testing.assert_close(forked.policy.score, cache.policy.score.repeat_interleave(3, dim=1))
    torch.testing.assert_close(forked.head_pos, cache.head_pos.repeat_interleave(3, dim=1))
