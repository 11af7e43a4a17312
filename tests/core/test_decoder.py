"""The step-level decoder: continuous batching, per-row sampling, chunked prefill, num_samples, the stateful
logits-processor protocol (a lock-stepped guide model), position-aware hooks, and clear errors."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.core.cache import CachePolicy
from lmlab.core.config import ModelConfig
from lmlab.core.decoder import Decoder
from lmlab.core.generate import generate
from lmlab.core.hooks import current_context, forward_context
from lmlab.core.model import Transformer
from lmlab.core.processors import GuideProcessor, StatefulProcessor
from lmlab.core.sampling import SamplingParams

V = 50
SAMPLE = SamplingParams(temperature=1.0, top_k=20)


def tiny(seed: int, **overrides) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96,
                                 **overrides)
    return Transformer(cfg).init_weights(std=0.3, seed=seed)  # a wide init: sharp, seed-sensitive distributions


@pytest.fixture(scope="module")
def model():
    return tiny(0)


@pytest.fixture(scope="module")
def guide():
    return tiny(1)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(1, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_alone(model, p, params, max_new, seed=None, **kw) -> list[int]:
    dec = Decoder(model, max_len=64, **kw)
    (rid,) = dec.add([p], params, max_new_tokens=max_new, stop_token_ids=[],
                     generators=[gen(seed) if seed is not None else None])
    out = []
    while dec.num_active:
        out.append(dec.step().as_dict()[rid])
    return out


def collect(dec: Decoder, joins: dict[int, list[tuple]]) -> dict[int, list[int]]:
    """Step ``dec`` to the end; ``joins[k]`` = add() argument tuples to apply before step k."""
    tokens: dict[int, list[int]] = {}
    k = 0
    while dec.num_active or any(j >= k for j in joins):
        for args, kwargs in joins.get(k, []):
            for rid in dec.add(*args, **kwargs):
                tokens[rid] = []
        if dec.num_active:
            for rid, t in dec.step().as_dict().items():
                tokens[rid].append(t)
        k += 1
    return tokens


def test_rows_joining_a_running_batch_get_the_tokens_they_get_alone(model):
    """Greedy and seeded-sampling requests joining at steps 0, 3 and 5 with different settings and lengths."""
    a, b, c, d = prompt(5, 1), prompt(9, 2), prompt(2, 3), prompt(6, 4)
    dec = Decoder(model, max_len=64)
    joins = {
        0: [(([a], SamplingParams()), dict(max_new_tokens=10, stop_token_ids=[])),
            (([d], SAMPLE), dict(max_new_tokens=12, stop_token_ids=[], generators=[gen(40)]))],
        3: [(([b], SamplingParams(temperature=0.7)), dict(max_new_tokens=8, stop_token_ids=[], generators=[gen(11)]))],
        5: [(([c], SamplingParams(repetition_penalty=1.3)), dict(max_new_tokens=9, stop_token_ids=[]))],
    }
    tokens = collect(dec, joins)
    assert tokens[0] == run_alone(model, a, SamplingParams(), 10)
    assert tokens[1] == run_alone(model, d, SAMPLE, 12, seed=40)
    assert tokens[2] == run_alone(model, b, SamplingParams(temperature=0.7), 8, seed=11)
    assert tokens[3] == run_alone(model, c, SamplingParams(repetition_penalty=1.3), 9)
    # the seeded rows really sample: another seed gives other tokens
    assert run_alone(model, d, SAMPLE, 12, seed=41) != tokens[1]
    assert dec.cache is None and dec.num_active == 0


def test_finished_rows_stop_costing_compute(model):
    rows_per_forward = []

    def count(x, name):
        rows_per_forward.append((current_context().phase, x.shape[0]))

    dec = Decoder(model, max_len=32)
    with model.hooks([("embed", count)]):
        dec.add([prompt(4, 1), prompt(4, 2), prompt(4, 3)], max_new_tokens=2, stop_token_ids=[])
        dec.add([prompt(3, 4)], max_new_tokens=5, stop_token_ids=[])
        while dec.num_active:
            dec.step()
            assert dec.cache is None or dec.cache.batch_size == dec.num_active
    # two prefills (3 rows, 1 row); 4 rows decode once, then the three 2-token rows are gone: 1 row x 3 more
    assert rows_per_forward == [("prefill", 3), ("prefill", 1), ("decode", 4)] + [("decode", 1)] * 3


def test_chunked_prefill_equals_one_shot(model):
    prompts = [prompt(3, 5), prompt(11, 6), prompt(7, 7)]
    one = Decoder(model, max_len=40)
    one.add(prompts, max_new_tokens=6, stop_token_ids=[])
    for chunk in (1, 4):
        chunked = Decoder(model, max_len=40, prefill_chunk_size=chunk)
        chunked.add(prompts, max_new_tokens=6, stop_token_ids=[])
        torch.testing.assert_close(chunked._logits, one._logits, atol=1e-5, rtol=1e-5)
        assert chunked.cache.n_slots.tolist() == [3, 11, 7] == one.cache.n_slots.tolist()
    ref = generate(model, prompts, max_new_tokens=6, stop_token_ids=[])
    assert generate(model, prompts, max_new_tokens=6, stop_token_ids=[], prefill_chunk_size=4) == ref


def test_num_samples_prefills_each_prompt_once_and_matches_one_row_sampling(model):
    prompts = [prompt(5, 8), prompt(3, 9)]
    prefill_rows = []

    def count(x, name):
        if current_context().phase == "prefill":
            prefill_rows.append(x.shape[0])

    kw = dict(max_new_tokens=8, temperature=1.0, stop_token_ids=[])
    with model.hooks([("embed", count)]):
        out = generate(model, prompts, num_samples=3, seed=100, **kw)
    assert prefill_rows == [2]  # one prefill forward over the two prompts, not six rows
    assert len(out) == 6 and all(r[:5] == prompts[0] for r in out[:3]) and all(r[:3] == prompts[1] for r in out[3:])
    # row r is seeded 100 + r: sample j of prompt i equals a one-row generation with that seed
    for r in range(6):
        assert out[r] == generate(model, [prompts[r // 3]], seed=100 + r, **kw)[0]
    assert len({tuple(r) for r in out[:3]}) > 1  # the forked samples differ
    # N = 1 is plain sampling with the same seed
    assert generate(model, prompts, num_samples=1, seed=5, **kw) == generate(model, prompts, seed=5, **kw)
    tensor_out = generate(model, torch.tensor([prompts[0]]), num_samples=2, seed=100, **kw)
    assert tensor_out.tolist() == out[:2]


class Recorder(StatefulProcessor):
    def __init__(self):
        self.events = []

    def start(self, prompts, max_new_tokens, row_ids):
        self.events.append(("start", prompts, max_new_tokens, row_ids))

    def step(self, ids, logits, info):
        self.events.append(("step", info.row_ids.tolist(), info.prompt_lengths.tolist(), info.new_tokens.tolist(),
                            ids.shape[1]))
        return logits

    def finish(self, row_ids):
        self.events.append(("finish", row_ids))


def test_stateful_processor_is_told_starts_steps_and_finishes(model):
    rec = Recorder()
    dec = Decoder(model, max_len=32, logits_processors=[rec], pad_token_id=0)
    p0, p1 = [0, 0, 7], [5]  # the pad id inside a prompt: lengths come from start(), not from padding
    dec.add([p0], max_new_tokens=2, stop_token_ids=[])
    dec.step()
    dec.add([p1], max_new_tokens=3, stop_token_ids=[])
    while dec.num_active:
        dec.step()
    assert rec.events == [
        ("start", [p0], [2], [0]),
        ("step", [0], [3], [0], 3),
        ("start", [p1], [3], [1]),
        ("step", [0, 1], [3, 1], [1, 0], 4),
        ("finish", [0]),
        ("step", [1], [1], [1], 2),
        ("step", [1], [1], [2], 3),
        ("finish", [1]),
    ]


def mixture_reference(model, guide, p, n_new, weight):
    """Greedy decoding of logits + weight * guide log-probs, both recomputed from scratch without a cache."""
    seq = list(p)
    for _ in range(n_new):
        x = torch.tensor([seq])
        mixed = model(x)[0, -1] + weight * guide(x)[0, -1].log_softmax(-1)
        seq.append(int(mixed.argmax()))
    return seq[len(p):]


@torch.no_grad()
def test_guide_processor_in_lock_step_equals_the_uncached_mixture(model, guide):
    prompts = [prompt(4, 10), [17], prompt(7, 11)]  # ragged, and a one-token prompt (empty guide prefill)
    late = prompt(5, 12)
    proc = GuideProcessor(guide, weight=2.0)
    dec = Decoder(model, max_len=32, logits_processors=[proc])
    tokens = collect(dec, {
        0: [((prompts, SamplingParams()), dict(max_new_tokens=6, stop_token_ids=[]))],
        2: [(([late], SamplingParams()), dict(max_new_tokens=7, stop_token_ids=[]))],
    })
    for rid, p, n in [(0, prompts[0], 6), (1, prompts[1], 6), (2, prompts[2], 6), (3, late, 7)]:
        assert tokens[rid] == mixture_reference(model, guide, p, n, 2.0)
    base = [run_alone(model, prompts[i], SamplingParams(), 6) for i in range(3)]
    assert [tokens[i] for i in range(3)] != base  # the guide does change the tokens
    assert proc.rows == [] and proc.cache.batch_size == 0


def test_a_raising_processor_is_named_and_leaves_the_batch_usable(model):
    calls = []

    def flaky(ids, logits):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("bad state")
        return logits

    prompts = [prompt(4, 13), prompt(6, 14)]
    dec = Decoder(model, max_len=32, logits_processors=[flaky])
    dec.add(prompts, max_new_tokens=6, stop_token_ids=[])
    got = {0: [], 1: []}
    for _ in range(2):
        for rid, t in dec.step().as_dict().items():
            got[rid].append(t)
    slots = dec.cache.n_slots.tolist()
    with pytest.raises(LmlabError, match=r"^logits processor .*flaky failed: ValueError: bad state$"):
        dec.step()
    assert dec.cache.n_slots.tolist() == slots and dec.steps == 2  # nothing was committed
    dec.logits_processors.remove(flaky)
    while dec.num_active:
        for rid, t in dec.step().as_dict().items():
            got[rid].append(t)
    assert got == {i: run_alone(model, p, SamplingParams(), 6) for i, p in enumerate(prompts)}


def test_a_request_beyond_capacity_is_refused_by_name_and_others_continue(model):
    dec = Decoder(model, max_len=16)
    dec.add([prompt(5, 15)], max_new_tokens=8, stop_token_ids=[])
    first = [dec.step().tokens.item()]
    msg = r"^request 1: prompt of 12 tokens \+ max_new_tokens 8 = 20 exceeds the decoder's max_len 16$"
    with pytest.raises(LmlabError, match=msg):
        dec.add([prompt(12, 16)], max_new_tokens=8)
    assert dec.num_active == 1
    while dec.num_active:
        first.append(dec.step().tokens.item())
    assert first == run_alone(model, prompt(5, 15), SamplingParams(), 8)


def test_cancel_removes_a_row_and_the_others_are_unchanged(model):
    prompts = [prompt(4, 17), prompt(5, 18), prompt(6, 19)]
    dec = Decoder(model, max_len=32)
    dec.add(prompts, max_new_tokens=6, stop_token_ids=[])
    got = {0: [], 2: []}
    dec.step()
    dec.cancel([1])
    with pytest.raises(LmlabError, match="requests \\[7\\] are not active"):
        dec.cancel([7])
    while dec.num_active:
        for rid, t in dec.step().as_dict().items():
            got[rid].append(t)
    assert got[0] == run_alone(model, prompts[0], SamplingParams(), 6)[1:]
    assert got[2] == run_alone(model, prompts[2], SamplingParams(), 6)[1:]


def test_hook_at_prompt_positions_gives_the_same_logits_cached_and_uncached(model):
    vec = torch.randn(32, generator=gen(3))

    def at_prompt(x, name):  # x: [B, T, d_model]
        return x + vec * current_context().prompt_mask()[..., None]

    prompts = [prompt(3, 20), prompt(7, 21)]
    seen = []  # the decoder's logits of every step, by request id
    dec = Decoder(model, max_len=32,
                  logits_processors=[lambda ids, logits: seen.append(logits.clone()) or logits])
    with model.hooks([("blocks.0.resid_post", at_prompt)]):
        dec.add(prompts, max_new_tokens=5, stop_token_ids=[])
        new = {0: [], 1: []}
        while dec.num_active:
            for rid, t in dec.step().as_dict().items():
                new[rid].append(t)
        for rid, p in enumerate(prompts):
            full = torch.tensor([p + new[rid]])
            with forward_context(prompt_lengths=torch.tensor([len(p)])):
                ref = model(full)[0, len(p) - 1:-1]  # [5, V]: the logits that chose each new token
            torch.testing.assert_close(torch.stack([s[rid] for s in seen]), ref, atol=1e-5, rtol=1e-5)
    base = {rid: run_alone(model, p, SamplingParams(), 5) for rid, p in enumerate(prompts)}
    assert base != new  # the steering changed something


def test_steering_one_request_leaves_its_batch_mates_unchanged(model):
    vec = 3 * torch.randn(32, generator=gen(4))

    def steer_request_1(x, name):
        ctx = current_context()
        return x + vec * ctx.row_mask(1)[:, None, None]

    prompts = [prompt(4, 22), prompt(4, 23), prompt(6, 24)]
    dec = Decoder(model, max_len=32)
    with model.hooks([("blocks.0.resid_post", steer_request_1)]):
        dec.add(prompts, max_new_tokens=8, stop_token_ids=[])
        got = {0: [], 1: [], 2: []}
        while dec.num_active:
            for rid, t in dec.step().as_dict().items():
                got[rid].append(t)
    plain = {rid: run_alone(model, p, SamplingParams(), 8) for rid, p in enumerate(prompts)}
    assert got[0] == plain[0] and got[2] == plain[2]
    assert got[1] != plain[1]


def test_hook_context_positions_and_phases(model):
    seen = []

    def record(x, name):
        ctx = current_context()
        seen.append((ctx.phase, ctx.positions.tolist(), ctx.row_ids.tolist() if ctx.row_ids is not None else None))

    dec = Decoder(model, max_len=16)
    with model.hooks([("embed", record)]):
        dec.add([[1, 2, 3], [4]], max_new_tokens=2, stop_token_ids=[])
        while dec.num_active:
            dec.step()
        model(torch.tensor([[1, 2]]))
    assert seen == [("prefill", [[0, 1, 2], [0, 1, 2]], [0, 1]), ("decode", [[3], [1]], [0, 1]),
                    ("forward", [[0, 1]], None)]
    assert current_context() is None


def test_bad_arguments_are_one_line_errors(model):
    dec = Decoder(model, max_len=16)
    with pytest.raises(LmlabError, match="every prompt must contain at least one token"):
        dec.add([[]])
    with pytest.raises(LmlabError, match="2 generators for 1 rows"):
        dec.add([[1]], generators=[gen(0), gen(1)])
    with pytest.raises(LmlabError, match=r"^request 0: token id 50 is outside the model's vocabulary \[0, 50\)$"):
        dec.add([[1, 50]])
    with pytest.raises(LmlabError, match="no active rows"):
        dec.step()
    with pytest.raises(LmlabError, match="top_p must be in"):
        dec.add([[1]], SamplingParams(temperature=1.0, top_p=0.0))


def test_a_hook_failing_inside_a_decode_forward_makes_the_decoder_refuse_to_continue(model):
    def boom(x, name):
        if current_context().phase == "decode":
            raise RuntimeError("hook failed")

    dec = Decoder(model, max_len=16)
    dec.add([[1, 2, 3]], max_new_tokens=4, stop_token_ids=[])
    with model.hooks([("embed", boom)]):
        with pytest.raises(RuntimeError, match="hook failed"):
            dec.step()
    with pytest.raises(LmlabError, match="unusable after a model forward failed during a step"):
        dec.step()


class KeepLast(CachePolicy):
    """A bounded cache: 8 slots, at most the 6 most recent tokens kept after every forward."""

    def capacity(self, max_len):
        return 8

    def evict(self, cache):
        n = int(cache.n_slots.max())
        if n > 6:
            cache.compact(torch.arange(n - 6, n).expand(cache.batch_size, 6))


def test_chunked_prefill_streams_a_long_prompt_through_a_bounded_cache(model):
    long_prompt = prompt(20, 25)
    with pytest.raises(LmlabError, match="^request 0: KV cache is full: capacity 8 tokens, needs 20$"):
        Decoder(model, max_len=32, cache_policy=KeepLast()).add([long_prompt], max_new_tokens=4)
    dec = Decoder(model, max_len=32, cache_policy=KeepLast(), prefill_chunk_size=2)
    dec.add([long_prompt], max_new_tokens=4, stop_token_ids=[])
    assert dec.cache.capacity == 8 and dec.cache.n_slots.tolist() == [6]
    assert dec.cache.slot_pos[0, :6].tolist() == list(range(14, 20))
    while dec.num_active:
        dec.step()
        assert dec.cache is None or int(dec.cache.n_slots.max()) <= 6


class DigitsTokenizer:
    """decode(ids) -> the ids as space-separated numbers: enough for stop strings."""

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_each_row_stops_on_its_own_conditions(model):
    p = prompt(5, 26)
    free = run_alone(model, p, SamplingParams(), 12)
    stop_tok = free[4]
    cut = free.index(stop_tok) + 1
    dec = Decoder(model, max_len=32, tokenizer=DigitsTokenizer())
    dec.add([p], max_new_tokens=12, stop_token_ids=[stop_tok])  # request 0: a stop token
    dec.add([p], max_new_tokens=12, stop_token_ids=[])  # request 1: runs to max_new_tokens
    dec.add([p], max_new_tokens=12, stop_token_ids=[], stop_strings=[f"{free[1]} {free[2]}"])  # 2: a stop string
    dec.add([p], max_new_tokens=5, stop_token_ids=[])  # request 3: a shorter budget
    got, finished_at = {i: [] for i in range(4)}, {}
    while dec.num_active:
        out = dec.step()
        for rid, t in out.as_dict().items():
            got[rid].append(t)
        for rid in out.finished:
            finished_at[rid] = dec.steps
    assert got == {0: free[:cut], 1: free, 2: free[:3], 3: free[:5]}
    assert finished_at == {0: cut, 1: 12, 2: 3, 3: 5}


@torch.no_grad()
def test_generate_takes_a_stateful_processor_through_its_config(model, guide):
    prompts = [prompt(3, 27), prompt(6, 28)]
    out = generate(model, prompts, max_new_tokens=5, stop_token_ids=[], logits_processors=[GuideProcessor(guide, 1.5)])
    assert [r[len(p):] for r, p in zip(out, prompts)] == [mixture_reference(model, guide, p, 5, 1.5) for p in prompts]


def test_tokens_leave_the_decoder_as_normal_tensors(model):
    """The decoder runs in inference mode; what it returns can be trained on and changed in place."""
    dec = Decoder(model, max_len=16)
    dec.add([[1, 2, 3]], max_new_tokens=3)
    out = dec.step()
    assert not out.tokens.is_inference() and not out.row_ids.is_inference()
    ids = generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    assert not ids.is_inference()
    emb = torch.nn.Embedding(model.config.vocab_size, 4)
    emb(ids).sum().backward()  # an inference tensor cannot be saved for backward
    assert emb.weight.grad is not None
    out.tokens.add_(1)  # nor changed in place outside inference mode
