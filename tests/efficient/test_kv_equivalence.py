"""The live KV policies against a frozen copy of the session-6 implementation (kv_legacy_policies.py).

The session-7 speed work (scores of a decode step accumulated in one batched update after the last layer,
Keyformer's noise for every layer drawn at once) must not change what any policy keeps: on awkward inputs
(uneven prompts with right padding, several rows, prompts longer than the budget streamed in chunks, a row
joining a running batch, grouped-query and multi-head models) every step must keep exactly the same tokens
per row, layer and head, the same positions, and give the same logits within fp32 rounding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.decoder import Decoder
from lmlab.core.model import Transformer
from lmlab.efficient import kv_policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_legacy_policies import LEGACY  # noqa: E402

V = 61


@pytest.fixture(scope="module", params=["gqa", "mha"])
def model(request):
    kv = 2 if request.param == "gqa" else 4
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=3, n_heads=4, n_kv_heads=kv, max_seq_len=256)
    return Transformer(cfg).init_weights(std=0.3, seed=2).eval()


def _prompt(T, seed):
    return torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(seed)).tolist()


def _kept(cache):
    """Per (layer, row, KV head): the sorted positions of the filled slots, plus each row's counters."""
    pos = cache.positions_per_head()  # [L, B, n_kv, cap]
    L, B, n_kv, _ = pos.shape
    sets = [[[sorted(p for p in pos[i, b, h].tolist() if p >= 0) for h in range(n_kv)] for b in range(B)]
            for i in range(L)]
    return sets, cache.n_slots.tolist(), cache.next_pos.tolist(), cache.seen.tolist()


def _run(model, policy, *, chunk, steps=14, join_at=None):
    """Greedy decoding of three uneven prompts (+ one joining after ``join_at`` steps); per step: the
    next-token logits of every row and the cache's kept sets."""
    logged = []

    def record(ids, logits):
        logged.append(logits.detach().clone())
        return logits

    dec = Decoder(model, max_len=80, cache_policy=policy, prefill_chunk_size=chunk, logits_processors=[record])
    dec.add([_prompt(37, 1), _prompt(23, 2), _prompt(9, 3)], max_new_tokens=steps + 4, stop_token_ids=[])
    trace = []
    for t in range(steps):
        if t == join_at:
            dec.add([_prompt(29, 4)], max_new_tokens=steps, stop_token_ids=[])
        out = dec.step()
        trace.append((out.tokens.tolist(), _kept(dec.cache)))
    return logged, trace, dec.cache


SCORED = [("h2o", {}), ("h2o", dict(slack=0)), ("h2o", dict(per_head=False, slack=2)),
          ("keyformer", {}), ("keyformer", dict(slack=0)), ("keyformer", dict(per_head=False, slack=2, seed=7))]
CASES = [("window", {}, True), ("window", dict(slack=0), True),
         ("sinks", {}, True), ("sinks", dict(slack=0), True), ("sinks", dict(reindex=False, slack=3), True)]
CASES += [(n, o, batched) for n, o in SCORED for batched in (True, False)]


def _case_id(name, opts, batched):
    extra = "-".join(f"{k}{v}" for k, v in opts.items()) or "default"
    return f"{name}-{extra}" + ("" if name in ("window", "sinks") else ("-batched" if batched else "-per-layer"))


@pytest.mark.parametrize("name, opts, batched", CASES, ids=[_case_id(*c) for c in CASES])
@pytest.mark.parametrize("budget, chunk", [(12, 7), (0.3, None)])
def test_live_policy_keeps_exactly_what_the_session6_policy_keeps(model, name, opts, budget, chunk, batched):
    """Budgets below every prompt but the shortest (the 9-token row stays under 12 tokens for a while,
    then crosses them while decoding); chunks of 7 tokens make prompts stream through the cache."""
    live = kv_policy(name, budget=budget, **opts)
    if not batched:
        live.batch_limit = 0  # force the per-layer scoring path (prefill chunks of long prompts take it)
    old = LEGACY[name](budget=budget, **opts)
    join = 5 if budget == 12 else None
    logits_new, trace_new, cache_new = _run(model, live, chunk=chunk, join_at=join)
    logits_old, trace_old, cache_old = _run(model, old, chunk=chunk, join_at=join)
    assert len(trace_new) == len(trace_old)
    for t, ((tok_n, kept_n), (tok_o, kept_o)) in enumerate(zip(trace_new, trace_old)):
        assert kept_n == kept_o, f"step {t}: kept tokens differ"
        assert tok_n == tok_o, f"step {t}: tokens differ"
    for a, b in zip(logits_new, logits_old):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert max(cache_new.n_slots.tolist()) < 37  # the policy did evict
    if name in ("h2o", "keyformer"):
        s_new, s_old = cache_new.policy.score, cache_old.policy.score
        torch.testing.assert_close(s_new[..., :s_old.shape[-1]], s_old[..., :s_new.shape[-1]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["h2o", "keyformer"])
def test_budget_above_the_sequence_still_equals_the_plain_cache_with_batched_scores(model, name):
    """An active policy whose budget is never reached (budget 79 < max_len 80, sequences <= 55 tokens) scores
    every step through the batched path and must leave the logits of the plain cache untouched."""
    logits_plain, trace_plain, _ = _run(model, None, chunk=6)
    logits_pol, trace_pol, cache = _run(model, kv_policy(name, budget=79), chunk=6)
    assert cache.policy.active and float(cache.policy.score.abs().sum()) > 0
    assert [t for t, _ in trace_pol] == [t for t, _ in trace_plain]
    for a, b in zip(logits_pol, logits_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_decode_steps_are_scored_in_one_batched_update_and_large_chunks_per_layer(model, monkeypatch):
    """The speed path is really taken: every decode forward scores all layers at once after the last layer
    (nothing left held), and a prompt chunk whose probabilities exceed ``batch_limit`` is scored layer by
    layer as it comes (memory stays one layer's probabilities)."""
    from lmlab.efficient.kv_policies import AccumulatedScorePolicy

    calls = []
    original = AccumulatedScorePolicy._accumulate

    def spy(self, cache, first, layer_probs):
        calls.append((first, len(layer_probs), layer_probs[0].shape[2]))  # (first layer, layers, queries T)
        return original(self, cache, first, layer_probs)

    monkeypatch.setattr(AccumulatedScorePolicy, "_accumulate", spy)
    L = model.config.n_layers
    policy = kv_policy("keyformer", budget=12)
    policy.batch_limit = L * 4 * 40  # [L, B=1, H=4, T, S <= 40]: decode (T = 1) fits, an 8-token chunk (S >= 8) does not
    dec = Decoder(model, max_len=80, cache_policy=policy, prefill_chunk_size=8)
    dec.add([_prompt(30, 1)], max_new_tokens=6, stop_token_ids=[])
    for _ in range(5):
        dec.step()
    prefill = [c for c in calls if c[2] > 1]
    decode = [c for c in calls if c[2] == 1]
    assert prefill and all(n == 1 for _, n, _ in prefill)  # per layer
    assert [f for f, _, _ in prefill[:L]] == list(range(L))
    assert len(decode) >= 4 and all(c[:2] == (0, L) for c in decode)  # one call per step, all layers
    assert dec.cache.policy._held == {}
