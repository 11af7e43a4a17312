"""lmlab vs transformers on identical random weights, for every supported family."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers  # test extra: a missing or broken install fails, never skips

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_models import FAMILIES, VOCAB, save_hf_model  # noqa: E402

import lmlab  # noqa: E402


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    hf = save_hf_model(request.param, d)
    return request.param, hf, lmlab.load(d), d


def _ids(batch=2, seq=20, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_logits_and_hidden_states_match(pair):
    family, hf, ours, _ = pair
    ids = _ids()
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True)
        names = [f"blocks.{i}.resid_pre" for i in range(ours.config.n_layers)] + ["ln_final"]
        cache = {}
        with lmlab.core.hooks.hooks(ours, [(n, lambda x, n: cache.__setitem__(n, x)) for n in names]):
            logits = ours(ids)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    for i, name in enumerate(names):
        torch.testing.assert_close(cache[name], ref.hidden_states[i], atol=1e-4, rtol=1e-4, msg=f"{family} {name}")


def test_save_then_transformers_loads_same_logits(pair, tmp_path):
    family, hf, ours, _ = pair
    lmlab.save(ours, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _ids(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
    assert type(reloaded) is type(hf)


def test_cached_decoding_equals_uncached(pair):
    _, _, ours, _ = pair
    ids = _ids(seq=24, seed=3)
    with torch.no_grad():
        full = ours(ids)
        cache = ours.new_cache(batch_size=2, max_len=32)
        parts = [ours(ids[:, :10], cache=cache)]
        for t in range(10, 24):
            parts.append(ours(ids[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
