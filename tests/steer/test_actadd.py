"""ActAdd on the shipped reference model: the vector, front injection, per-row steering, files and errors."""

from __future__ import annotations

import pytest
import torch

from lmlab import LmlabError
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.reference import load_reference
from lmlab.steer import SteeringVector, actadd

PROMPTS = ["Alice Moreau was born in", "The capital of", "Bo Ek works as a"]


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def vec(ref):
    return actadd(ref.model, ref.tokenizer, "Love", "Hate", layer=1)


def rows(ref):
    return [ref.tokenizer.encode(p) for p in PROMPTS]


def test_vector_is_padded_difference(ref, vec):
    m, tok = ref.model, ref.tokenizer
    a, b = tok.encode("Love"), tok.encode("Hate")
    assert len(a) == 3 and len(b) == 2  # uneven: "Hate" is padded with the space token
    space = tok.encode(" ")[0]
    _, acts = m.run_with_cache(torch.tensor([a, b + [space]]), names=["blocks.1.resid_pre"])
    x = acts["blocks.1.resid_pre"]
    assert vec.vector.shape == (3, m.config.d_model)
    torch.testing.assert_close(vec.vector, x[0] - x[1])
    assert vec.vector[2].abs().sum() > 0


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, top_k=50, seed=3)])
def test_zero_coeff_reproduces_base(ref, vec, sampling):
    base = generate(ref.model, rows(ref), max_new_tokens=12, **sampling)
    with vec.apply(ref.model, coeff=0.0, positions="all"):
        zero = generate(ref.model, rows(ref), max_new_tokens=12, **sampling)
    with vec.apply(ref.model, coeff=8.0, positions="all"):
        steered = generate(ref.model, rows(ref), max_new_tokens=12, **sampling)
    assert zero == base
    assert steered != base  # the invariant is not vacuous


def test_one_row_steered_others_unchanged(ref, vec):
    base = generate(ref.model, rows(ref), max_new_tokens=12, temperature=1.0, seed=5)
    with vec.apply(ref.model, coeff=8.0, positions="all", rows=[1]):
        out = generate(ref.model, rows(ref), max_new_tokens=12, temperature=1.0, seed=5)
    assert out[0] == base[0] and out[2] == base[2]
    assert out[1] != base[1]


def test_front_injection_cached_equals_uncached(ref, vec):
    """Front positions are absolute: the cached decoder steers exactly what a full forward steers."""
    m = ref.model
    prompt = rows(ref)[0]
    with vec.apply(m, coeff=6.0, positions="front"):
        cached = generate(m, [prompt], max_new_tokens=8, stop_token_ids=[])[0]
        ids = list(prompt)
        for _ in range(8):
            logits = m(torch.tensor([ids]))[0, -1]
            ids.append(int(logits.argmax()))
    assert cached == ids
    with vec.apply(m, coeff=6.0, positions="front"):
        steered = m(torch.tensor([prompt]))
    base = m(torch.tensor([prompt]))
    assert (steered - base)[0, -1].abs().max() > 0.5  # the last prompt position feels the front injection
    # front injection touches only the first n positions: logits there differ, later ones see it via attention
    with vec.apply(m, coeff=6.0, positions=[0, 1, 2]):
        listed = m(torch.tensor([prompt]))
    with vec.apply(m, coeff=6.0, positions="front"):
        front = m(torch.tensor([prompt]))
    assert not torch.allclose(listed, front)  # a list collapses the vector to its mean; front adds row i at i


def test_generated_positions_leave_prompt_logits(ref, vec):
    m = ref.model
    prompt = rows(ref)[2]
    with vec.apply(m, coeff=8.0, positions="generated"):
        first = generate(m, [prompt], max_new_tokens=1, stop_token_ids=[])[0]
        out = generate(m, [prompt], max_new_tokens=10, stop_token_ids=[])[0]
    base = generate(m, [prompt], max_new_tokens=10, stop_token_ids=[])[0]
    assert first[-1] == base[len(prompt)]  # the first new token comes from prompt positions only
    assert out != base


def test_file_roundtrip_and_refusals(ref, vec, tmp_path):
    path = vec.save(tmp_path / "love.safetensors")
    back = SteeringVector.load(path, model=ref.model)
    torch.testing.assert_close(back.vector, vec.vector)
    assert back.hook == vec.hook and back.meta["positive"] == "Love"
    other = Transformer(ModelConfig.llama_like(vocab_size=ref.model.config.vocab_size, d_model=64, n_layers=2,
                                               n_heads=4)).init_weights(seed=0)
    with pytest.raises(LmlabError, match="width 128 does not match the model's d_model 64"):
        SteeringVector.load(path, model=other)
    same_width = Transformer(ref.model.config.replace(n_layers=2)).init_weights(seed=0)
    with pytest.raises(LmlabError, match="fingerprint"):
        SteeringVector.load(path, model=same_width)
    bad = SteeringVector(vec.vector, "blocks.9.resid_pre", vec.fingerprint)
    with pytest.raises(LmlabError, match="hook point 'blocks.9.resid_pre' does not exist"):
        with bad.apply(ref.model):
            pass
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(LmlabError, match="junk.safetensors: not a safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")


def test_non_finite_coefficient_is_one_line_error(ref, vec):
    with pytest.raises(LmlabError, match="makes activations non-finite") as err:
        with vec.apply(ref.model, coeff=1e30, positions="all"):
            generate(ref.model, rows(ref), max_new_tokens=4)
    assert "\n" not in str(err.value)
    with pytest.raises(LmlabError, match="positions must be one of"):
        with vec.apply(ref.model, positions="middle"):
            pass
