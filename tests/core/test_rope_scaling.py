"""RoPE scalings (linear, dynamic NTK, YaRN, Llama-3, LongRoPE factors) against transformers' rotary code.

Tiny random transformers models with ``rope_parameters`` of each type, a short original context (32) so
the test sequences run past it, converted by the production path and compared in fp32.
"""

from __future__ import annotations

import json

import pytest
import torch

import lmlab
from lmlab.core.config import ModelConfig
from lmlab.core.rope import attention_scaling, inverse_frequencies
from lmlab.errors import LmlabError

transformers = pytest.importorskip("transformers")

VOCAB, ORIGINAL = 97, 32
HALF_ROT = 8  # d_head 16 -> 8 rotated pairs

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn_untruncated": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": ORIGINAL,
                         "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": ORIGINAL,
                 "short_factor": [1.0 + 0.1 * i for i in range(HALF_ROT)],
                 "long_factor": [1.0 + 0.7 * i for i in range(HALF_ROT)]},
}


def _hf_model(name: str, family: str = "llama", seed: int = 0):
    T = transformers
    rope = {"rope_theta": 10000.0, **SCALINGS[name]}
    # dynamic scales relative to max_position_embeddings; the others relative to original_max_position_embeddings
    max_pos = ORIGINAL if name == "dynamic" else 4 * ORIGINAL
    if family == "llama":
        cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=max_pos,
                            rope_parameters=rope)
    else:  # NeoX: partial rotary (half of each head), so the factor list covers only the rotated dims
        cfg = T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=128, max_position_embeddings=max_pos, rotary_pct=0.5,
                              rope_parameters={**rope, "partial_rotary_factor": 0.5})
    assert cfg.rope_parameters["rope_type"] == SCALINGS[name]["rope_type"]
    assert cfg.max_position_embeddings == max_pos
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(seq: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SCALINGS))
@pytest.mark.parametrize("seq", [20, 80])  # within and past the original context
def test_llama_logits_match_transformers(name, seq, tmp_path):
    hf = _hf_model(name)
    hf.save_pretrained(tmp_path)
    ours = lmlab.load(tmp_path)
    assert ours.config.rope_scaling == SCALINGS[name]["rope_type"]
    ids = _ids(seq)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["yarn", "longrope", "dynamic"])
def test_neox_partial_rotary_matches_transformers(name, tmp_path):
    hf = _hf_model(name, family="neox")
    hf.save_pretrained(tmp_path)
    ours = lmlab.load(tmp_path)
    assert ours.config.rot_dim == 16
    ids = _ids(72)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["dynamic", "longrope", "yarn"])
def test_cached_decoding_past_the_original_context_matches_transformers(name, tmp_path):
    """Prefill 24 tokens, then decode one at a time to 48 with a cache, in both libraries: dynamic NTK
    changes its base at every step past 32 while older keys keep the rotation they were cached with."""
    hf = _hf_model(name)
    hf.save_pretrained(tmp_path)
    ours = lmlab.load(tmp_path)
    ids = _ids(48)
    with torch.no_grad():
        out = hf(ids[:, :24], use_cache=True)
        ref, past = [out.logits], out.past_key_values
        for t in range(24, 48):
            out = hf(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            ref.append(out.logits)
            past = out.past_key_values
        cache = ours.new_cache(batch_size=2, max_len=48)
        got = [ours(ids[:, :24], cache=cache)] + [ours(ids[:, t:t + 1], cache=cache) for t in range(24, 48)]
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(ref, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(SCALINGS))
def test_config_json_round_trip_and_transformers_reload(name, tmp_path):
    hf = _hf_model(name)
    hf.save_pretrained(tmp_path / "src")
    ours = lmlab.load(tmp_path / "src")
    lmlab.save(ours, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())["rope_parameters"]
    for key, value in SCALINGS[name].items():
        assert written[key] == value, key
    again = lmlab.load(tmp_path / "out")
    assert again.config == ours.config
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = _ids(70, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_scalings_change_the_frequencies_they_should():
    """Guards against a scaling that silently falls back to default (the parity tests could then only pass
    if transformers did the same)."""
    base = ModelConfig.llama_like(vocab_size=50, d_model=64, n_heads=4, max_seq_len=32)
    plain = inverse_frequencies(base)

    def with_(kind, **params):
        return base.replace(rope_scaling=kind, rope_scaling_params=tuple(sorted(params.items())))

    torch.testing.assert_close(inverse_frequencies(with_("linear", factor=4.0)), plain / 4)
    dyn = with_("dynamic", factor=4.0)
    torch.testing.assert_close(inverse_frequencies(dyn, seq_len=32), plain)  # within the context: untouched
    assert (inverse_frequencies(dyn, seq_len=64)[1:] < plain[1:]).all()  # past it: the base grows
    yarn = with_("yarn", factor=4.0, original_max_position_embeddings=8)
    f = inverse_frequencies(yarn)
    assert f[0] == plain[0] and torch.allclose(f[-1], plain[-1] / 4)  # high freq kept, low freq interpolated
    assert attention_scaling(yarn) == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)
    lr = with_("longrope", short_factor=(1.0,) * 8, long_factor=tuple(range(1, 9)), original_max_position_embeddings=32)
    torch.testing.assert_close(inverse_frequencies(lr, seq_len=10), plain)
    torch.testing.assert_close(inverse_frequencies(lr, seq_len=40), plain / torch.arange(1, 9).float())


def _write(tmp_path, **cfg):
    base = {"model_type": "llama", "vocab_size": 50, "hidden_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32}
    (tmp_path / "config.json").write_text(json.dumps({**base, **cfg}))
    return tmp_path


@pytest.mark.parametrize("cfg, match", [
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 7, "long_factor": [1.0] * 8}},
     r"config\.json: .*short_factor must list rot_dim / 2 = 8 factors .*got 7"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0, -2.0] * 4}},
     r"long_factor must hold positive numbers"),
    ({"rope_scaling": {"rope_type": "linear"}}, r"config\.json: .*'linear' needs parameter 'factor'"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 0}}, r"factor must be a positive number"),
    ({"rope_scaling": {"rope_type": "su", "factor": 2.0}}, r"rope scaling type 'su' is not supported"),
    ({"model_type": "gptj", "n_embd": 64, "n_layer": 1, "n_head": 4,
      "rope_scaling": {"type": "yarn", "factor": 2.0}}, r"model_type 'gptj' cannot use rope scaling 'yarn'"),
    ({"model_type": "gpt2", "n_embd": 64, "n_layer": 1, "n_head": 4,
      "rope_parameters": {"rope_type": "linear", "factor": 2.0}}, r"model_type 'gpt2' cannot use rope scaling"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
      "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
     r"rope_parameters says rope_type 'default' but rope_scaling says 'linear'"),
])
def test_bad_rope_scaling_is_one_line_error(tmp_path, cfg, match):
    d = _write(tmp_path, **cfg)
    with pytest.raises(LmlabError, match=match) as err:
        lmlab.load(d)
    assert "\n" not in str(err.value)


def test_learned_positions_refuse_rope_scaling():
    with pytest.raises(LmlabError, match="needs rotary positions"):
        ModelConfig(model_type="gpt2", vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_mlp=8, pos_type="learned",
                    rope_scaling="linear", rope_scaling_params=(("factor", 2.0),))
