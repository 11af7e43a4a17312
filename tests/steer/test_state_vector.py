"""In-context state vectors: extraction at the separators, the paper's inner / momentum refinements, patching
in cached batched generation (only the chosen rows, only the separator positions), and errors."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.reference import load_reference
from lmlab.steer import StateVector, in_context_vector
from lmlab.steer.state_vector import (format_demonstrations, format_query, inner_optimize, momentum_optimize,
                                      state_trajectory)

DEMOS = [("Alice Moreau", "Stinok"), ("Bo Ek", "Gramotrek"), ("The capital of", "Stinok is big"),
         ("Ada", "Trodina"), ("Ed Fog", "a"), ("Mo", "Stinok"), ("Lia Pons", "Gramotrek"), ("Ute", "b c d")]
SEP = " =>"  # several tokens: every separator token is read and patched


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_trajectory_reads_attn_z_at_every_separator(ref):
    m, tok = ref.model, ref.tokenizer
    ids, where = format_demonstrations(tok, DEMOS, "Ada", SEP, "\n")
    n_sep = len(tok.encode(SEP))
    assert n_sep >= 2 and all(len(w) == n_sep for w in where) and len(where) == len(DEMOS) + 1
    assert all(ids[w[0]:w[-1] + 1] == tok.encode(SEP) for w in where)
    traj = state_trajectory(m, tok, DEMOS, "Ada", separator=SEP, n_layers=3)
    assert traj.shape == (len(DEMOS) + 1, 3, n_sep, m.config.n_heads * m.config.head_dim)
    _, acts = m.run_with_cache(torch.tensor([ids]), names=["blocks.2.attn.z"])
    z = acts["blocks.2.attn.z"][0].flatten(-2)  # [T, H*dh]
    for i, w in enumerate(where):
        torch.testing.assert_close(traj[i, 2], z[w], rtol=0, atol=1e-5)
    assert not torch.equal(traj[0], traj[-1])


def test_inner_and_momentum_follow_the_official_formulas():
    g = torch.Generator().manual_seed(0)
    traj = torch.randn(9, 2, 1, 4, generator=g)  # 8 demonstrations + the dummy query
    inner = inner_optimize(traj)
    torch.testing.assert_close(inner, traj[2:].mean(0))  # the last 7 states, uniformly
    v = [traj[i] for i in range(8)] + [inner]  # demonstrations' states, then v_inner
    diffs = [v[i] - v[i - 1] for i in range(3, 9)]  # the last six differences, oldest first
    expected = inner + sum(w * d for w, d in zip([1, 2, 4, 8, 16, 0], diffs)) / 31.0
    torch.testing.assert_close(momentum_optimize(traj), expected)
    # lr scales the step; a different weighting gives a different vector (the test can fail)
    torch.testing.assert_close(momentum_optimize(traj, lr=0.0), inner)
    assert not torch.allclose(momentum_optimize(traj, weights=[1, 1, 1, 1, 1, 1]), expected)
    # fewer demonstrations than weights: the newest weights, normalised by what was used
    short = traj[:3]
    inner3 = inner_optimize(short)
    exp3 = inner3 + (16 * (short[1] - short[0]) + 0 * (inner3 - short[1])) / 16.0
    torch.testing.assert_close(momentum_optimize(short), exp3)


@torch.no_grad()
def test_patch_replaces_only_the_separator_and_own_state_is_identity(ref):
    m, tok = ref.model, ref.tokenizer
    sv = in_context_vector(m, tok, DEMOS, "Ada", separator=SEP, n_layers=2, optimize="inner")
    q = torch.tensor([format_query(tok, "Bo Ek", SEP)])
    n_sep = sv.vector.shape[1]
    base, acts = m.run_with_cache(q, names=["blocks.0.attn.z", "blocks.1.attn.z", "blocks.2.attn.z"])
    with sv.apply(m):
        patched, pacts = m.run_with_cache(q, names=["blocks.0.attn.z", "blocks.1.attn.z", "blocks.2.attn.z"])
    for layer in (0, 1):
        z = pacts[f"blocks.{layer}.attn.z"][0].flatten(-2)
        torch.testing.assert_close(z[-n_sep:], sv.vector[layer], rtol=0, atol=0)
    # the query's tokens before the separator are untouched at layer 0 (nothing earlier was patched)
    torch.testing.assert_close(pacts["blocks.0.attn.z"][0, :-n_sep], acts["blocks.0.attn.z"][0, :-n_sep])
    assert not torch.allclose(patched[0, -1], base[0, -1])
    # patching the query's own state in changes nothing
    own = StateVector(torch.stack([acts[f"blocks.{i}.attn.z"][0].flatten(-2)[-n_sep:] for i in (0, 1)]),
                      sv.fingerprint)
    with own.apply(m):
        same = m(q)
    torch.testing.assert_close(same, base, rtol=0, atol=1e-6)


@torch.no_grad()
def test_cached_batched_generation_patches_each_rows_own_separator(ref):
    m, tok = ref.model, ref.tokenizer
    sv = in_context_vector(m, tok, DEMOS, "Ada", separator=SEP, n_layers=3)
    prompts = [format_query(tok, q, SEP) for q in ("Bo Ek", "Alice Moreau", "Mo")]  # uneven lengths
    base = generate(m, prompts, max_new_tokens=6, stop_token_ids=[])
    with sv.apply(m, strength=0.0):
        zero = generate(m, prompts, max_new_tokens=6, stop_token_ids=[])
    assert zero == base
    with sv.apply(m):
        steered = generate(m, prompts, max_new_tokens=6, stop_token_ids=[])
        solo = [generate(m, [p], max_new_tokens=6, stop_token_ids=[])[0] for p in prompts]
        first = [int(m(torch.tensor([p]))[0, -1].argmax()) for p in prompts]  # cache-less forward
    assert steered == solo
    assert [s[len(p)] for s, p in zip(steered, prompts)] == first
    assert steered != base
    with sv.apply(m, rows=[1]):
        one = generate(m, prompts, max_new_tokens=6, stop_token_ids=[])
    assert one[0] == base[0] and one[2] == base[2] and one[1] == steered[1]


def test_errors(ref):
    m, tok = ref.model, ref.tokenizer
    with pytest.raises(LmlabError, match="n_layers must be in"):
        in_context_vector(m, tok, DEMOS, "Ada", n_layers=99)
    with pytest.raises(LmlabError, match="at least one demonstration"):
        in_context_vector(m, tok, [], "Ada")
    with pytest.raises(LmlabError, match="optimize must be"):
        in_context_vector(m, tok, DEMOS, "Ada", optimize="adam")
    sv = in_context_vector(m, tok, DEMOS, "Ada", n_layers=2)
    other = Transformer(ModelConfig.llama_like(vocab_size=m.config.vocab_size, d_model=m.config.d_model,
                                               n_layers=4, n_heads=m.config.n_heads, max_seq_len=64))
    with pytest.raises(LmlabError, match="fingerprint"):
        with sv.apply(other):
            pass
    narrow = Transformer(ModelConfig.llama_like(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_seq_len=64))
    with pytest.raises(LmlabError, match=r"width 128 does not match this model.s n_heads \* d_head = 32"):
        with sv.apply(narrow):
            pass
    with pytest.raises(LmlabError, match="strength must be finite"):
        with sv.apply(m, strength=float("inf")):
            pass
