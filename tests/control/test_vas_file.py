"""VAS value models on disk (``lmlab.control.vas_file``) and ``lmlab generate --guide vas``: the round trip keeps
every weight and the decoding hyper-parameters, beta 0 reproduces the base's tokens (greedy and seeded sampling,
from Python and from the CLI), and a file for another base, width or vocabulary is one line naming the problem."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab import LmlabError
from lmlab.cli.main import main
from lmlab.control import VAS, ValueModel
from lmlab.control.vas_file import load_value_model, load_vas, read_header, save_value_model
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.reference import ASSET_DIR

V = 40
PROMPTS = [[3, 9, 4, 22, 7], [11], [5, 5, 30, 1, 17, 30, 8]]  # uneven, one of a single token


def tiny(seed: int, d: int = 32, layers: int = 2, vocab: int = V) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=4, n_kv_heads=2,
                                 max_seq_len=64)
    return Transformer(cfg).init_weights(std=0.3, seed=seed).eval()


def value_model(seed: int = 1, d: int = 16, vocab: int = V) -> ValueModel:
    vm = ValueModel(tiny(seed, d=d, layers=1, vocab=vocab))
    with torch.no_grad():  # a head that separates the candidates, so beta > 0 changes tokens
        vm.head.weight.normal_(0, 3.0, generator=torch.Generator().manual_seed(seed))
    return vm.eval()


@pytest.fixture(scope="module")
def base():
    return tiny(0, d=64)


def test_round_trip_keeps_weights_and_hyper_parameters(base, tmp_path):
    vm = value_model()
    path = save_value_model(tmp_path / "v.safetensors", vm, base, beta=2.5, top_k=7, meta={"reward": "toy"})
    header = read_header(path)
    assert header["hook"] == "ln_final" and header["width"] == 16 and header["vocab_size"] == V
    assert header["vas"] == {"beta": 2.5, "top_k": 7} and header["meta"] == {"reward": "toy"}
    back, _ = load_value_model(path, base)
    ids = torch.tensor([[3, 9, 4, 22], [11, 2, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids), vm(ids), rtol=0, atol=0)
    vas = load_vas(path, base)
    assert (vas.beta, vas.top_k) == (2.5, 7)
    assert (load_vas(path, base, beta=0.5).beta, load_vas(path, base, top_k=3).top_k) == (0.5, 3)
    # the loaded processor decodes exactly as the in-memory one (a changed weight would change these tokens)
    fresh = generate(base, PROMPTS, max_new_tokens=6, stop_token_ids=[], logits_processors=[VAS(vm, 2.5, 7)])
    loaded = generate(base, PROMPTS, max_new_tokens=6, stop_token_ids=[], logits_processors=[vas])
    plain = generate(base, PROMPTS, max_new_tokens=6, stop_token_ids=[])
    assert loaded == fresh and loaded != plain


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, seed=3)], ids=["greedy", "seeded"])
def test_scale_zero_is_the_base(base, tmp_path, sampling):
    path = save_value_model(tmp_path / "v.safetensors", value_model(), base, beta=4.0)
    plain = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], **sampling)
    zero = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], **sampling,
                    logits_processors=[load_vas(path, base, beta=0.0)])
    strong = generate(base, PROMPTS, max_new_tokens=8, stop_token_ids=[], **sampling,
                      logits_processors=[load_vas(path, base)])
    assert zero == plain and strong != plain


def test_wrong_base_width_or_file_is_one_line(base, tmp_path):
    path = save_value_model(tmp_path / "v.safetensors", value_model(), base)
    other = tiny(5, d=64)  # same shape, other weights: same fingerprint (it is of the config) ...
    wider = tiny(0, d=96)  # ... so another base means another config
    with pytest.raises(LmlabError, match="value model fit on base fingerprint") as err:
        load_vas(path, wider)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    load_vas(path, other)  # same config: accepted (the fingerprint is of the architecture)
    with pytest.raises(LmlabError, match="vocabulary of 40, the base model has 50"):
        load_vas(path, tiny(0, d=64, vocab=50))
    # a header whose width disagrees with its trunk
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["lmlab"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["width"] = 24
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"lmlab": json.dumps(header)})
    with pytest.raises(LmlabError, match="value head width 24 does not match its trunk's d_model 16"):
        load_vas(bad, base)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(LmlabError, match="not a safetensors VAS value-model file"):
        load_vas(junk, base)
    with pytest.raises(LmlabError, match="no such VAS value-model file"):
        load_vas(tmp_path / "missing.safetensors", base)


M = str(ASSET_DIR)
PROMPT = ["--prompt", "Trodina Shoba was born in", "--max-new-tokens", "8"]


def test_cli_builds_a_value_model_and_generate_uses_it(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Trodina Shoba is\nSerella Thahik is\n")
    out = tmp_path / "value.safetensors"
    assert main(["steer", M, "--method", "vas", "--prompts", str(prompts), "--reward", "sentiment:positive",
                 "--samples-per-prompt", "2", "--sample-tokens", "4", "--epochs", "1", "--value-d-model", "16",
                 "--value-layers", "1", "--vas-beta", "3", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 4 and info["value_params"] < info["base_params"] and out.exists()
    assert read_header(out)["vas"]["beta"] == 3.0
    for extra in ([], ["--temperature", "1", "--seed", "2"]):
        assert main(["generate", M, *PROMPT, *extra]) == 0
        plain = capsys.readouterr().out
        assert main(["generate", M, *PROMPT, *extra, "--guide", "vas", "--guide-model", str(out),
                     "--guide-scale", "0"]) == 0
        assert capsys.readouterr().out == plain
    assert main(["generate", M, *PROMPT, "--guide", "vas", "--guide-model", str(out)]) == 0  # the file's beta
    capsys.readouterr()


def test_cli_errors_are_one_line(tmp_path, capsys):
    import lmlab

    ref = lmlab.load(M)
    stranger = tiny(0, d=32, vocab=ref.config.vocab_size)  # same vocabulary, another model
    path = save_value_model(tmp_path / "v.safetensors", value_model(vocab=ref.config.vocab_size), stranger)
    cases = [(["--guide", "vas", "--guide-model", str(path)], "value model fit on base fingerprint"),
             (["--guide", "vas"], "--guide vas needs --guide-model"),
             (["--guide", "gedi", "--guide-scale", "2"], "--guide-scale is the VAS value weight"),
             (["--guide", "vas", "--guide-model", str(tmp_path / "none")], "no such VAS value-model file")]
    for argv, message in cases:
        assert main(["generate", M, *PROMPT, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (tmp_path / "p.txt").write_text("Trodina Shoba is\n")
    for argv, message in [(["--method", "vas", "--prompts", "p.txt"], "--method vas needs --reward"),
                          (["--method", "vas", "--prompts", str(tmp_path / "none"), "--reward", "sentiment:positive"],
                           "cannot read"),
                          (["--method", "vas", "--prompts", str(tmp_path / "p.txt"), "--reward", "mood:happy"],
                           "axis must be one of")]:
        assert main(["steer", M, *argv, "--out", str(tmp_path / "o.safetensors")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_serve_guides_accept_vas(base, tmp_path):
    """The server builds guides as ``lmlab generate --guide`` does: a vas entry loads the value file."""
    from lmlab.serve.config import GuideSpec, ServeConfig
    from lmlab.serve.guides import GuideTable

    path = save_value_model(tmp_path / "v.safetensors", value_model(), base, beta=4.0)
    specs = {"off": GuideSpec(guide="vas", guide_model=str(path), guide_scale=0.0),
             "on": GuideSpec(guide="vas", guide_model=str(path))}
    ServeConfig(guides=specs).validate()
    table = GuideTable(base, None, specs)
    (off,), (on,) = table.fresh("off"), table.fresh("on")
    assert isinstance(on, VAS) and (off.beta, on.beta) == (0.0, 4.0)
    plain = generate(base, PROMPTS, max_new_tokens=6, stop_token_ids=[])
    assert generate(base, PROMPTS, max_new_tokens=6, stop_token_ids=[], logits_processors=[off]) == plain
    with pytest.raises(LmlabError, match="guide 'x': vas needs guide_model"):
        GuideTable(base, None, {"x": GuideSpec(guide="vas")})
    with pytest.raises(LmlabError, match="guide 'w': .*value model fit on base fingerprint"):
        GuideTable(tiny(0, d=96), None, {"w": GuideSpec(guide="vas", guide_model=str(path))})
