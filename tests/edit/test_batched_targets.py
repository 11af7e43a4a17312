"""MEMIT's target vectors optimised for all requests at once equal the one-request-at-a-time optimisation: uneven
prompt and target lengths, a request that stops early while the others continue, the norm clamp, both hooks."""

import pytest
import torch

from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.edit import EditRequest, locate

torch.set_num_threads(1)

TEXTS = ["Ana Vell was born in Mirova.", "Bo Trask was born in Kelda.", "Cy Dorn lives in Mirova.",
         "Mirova is a city in Ostria.", "Kelda is a city in Brunia.", "Ana Vell works for Zent Labs.",
         "The capital of Ostria is Mirova.", "Bo Trask speaks Ostrian.", "Cy Dorn was born in Kelda."] * 8
# uneven: subjects of 2-4 words, prompts of 3-8 words, targets of one to three words
# (the longest row has the shortest target: padded target slots must stay inside the row)
REQS = [EditRequest("{} was born in", "Ana Vell", "Kelda"),
        EditRequest("The person called {} lives and works in the city of", "Bo Trask", "Kelda"),
        EditRequest("{} speaks", "Cy Dorn of Ostria", "Brunia"),
        EditRequest("{} works for", "Ana", "Zent Labs of Mirova")]
GROUPS = [["{}"], ["Bo Trask speaks Ostrian. {}", "Kelda. {}"]]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    return Transformer(ModelConfig.llama_like(vocab_size=len(tok), d_model=32, n_layers=3, n_heads=4,
                                              max_seq_len=64)).init_weights(std=0.3, seed=2).float()


@pytest.mark.parametrize("hook", ["blocks.1.mlp.out", "blocks.1.resid_post"])
@pytest.mark.parametrize("clamp", [4.0, 0.05])
def test_batched_targets_equal_one_request_at_a_time(model, tok, hook, clamp):
    settings = locate.TargetSettings(steps=12, lr=0.5, weight_decay=0.5, clamp_norm_factor=clamp, kl_factor=0.0625)
    inits, deltas, logs = locate.optimise_targets(model, tok, REQS, hook, GROUPS, settings)
    assert inits.shape == deltas.shape == (len(REQS), model.config.d_model)
    for i, req in enumerate(REQS):
        init, delta, log = locate.optimise_target(model, tok, req, hook, GROUPS, settings)
        torch.testing.assert_close(inits[i], init, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(deltas[i], delta, rtol=1e-3, atol=1e-4)
        assert logs[i]["steps"] == log["steps"]
        assert logs[i]["nll"] == pytest.approx(log["nll"], rel=1e-3, abs=1e-4)
    if clamp < 1:  # the clamp binds: each delta sits on its own request's ball, not a shared one
        ratios = deltas.norm(dim=1) / inits.norm(dim=1)
        torch.testing.assert_close(ratios, torch.full_like(ratios, clamp), rtol=1e-4, atol=0)


def test_an_early_stopped_request_keeps_its_delta_while_the_others_move_on(model, tok):
    """A high early-stop threshold that only some requests reach: those must stop exactly where their own loop
    would, so the batch must not keep stepping them (Adam's momentum would move them)."""
    settings = locate.TargetSettings(steps=12, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    singles = [locate.optimise_target(model, tok, r, "blocks.1.mlp.out", GROUPS, settings)[2] for r in REQS]
    losses = sorted(lg["loss"] for lg in singles)
    # a threshold between the final losses: reached (early) by some requests, never by the rest
    settings.early_stop_loss = (losses[0] + losses[-1]) / 2
    singles = [locate.optimise_target(model, tok, r, "blocks.1.mlp.out", GROUPS, settings) for r in REQS]
    steps = [s[2]["steps"] for s in singles]
    assert min(steps) < max(steps)  # some requests stop while others go on
    _, deltas, logs = locate.optimise_targets(model, tok, REQS, "blocks.1.mlp.out", GROUPS, settings)
    assert [lg["steps"] for lg in logs] == steps
    for i, (_, delta, _) in enumerate(singles):
        torch.testing.assert_close(deltas[i], delta, rtol=1e-3, atol=1e-4)


def test_chunks_of_requests_equal_one_batch(model, tok, monkeypatch):
    settings = locate.TargetSettings(steps=6, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    _, whole, _ = locate.optimise_targets(model, tok, REQS, "blocks.1.resid_post", GROUPS, settings)
    monkeypatch.setattr(locate, "MAX_CHUNK_ELEMENTS", 1)  # one request per chunk
    _, chunked, _ = locate.optimise_targets(model, tok, REQS, "blocks.1.resid_post", GROUPS, settings)
    torch.testing.assert_close(chunked, whole, rtol=1e-3, atol=1e-4)


def test_causal_tracing_effects_and_rome_layer_trace(model, tok, tmp_path):
    """Restoring clean MLP states into a clean run changes nothing (zero effect without noise); with noise the
    effects are reproducible by seed; ROME's layer="trace" edits the layer of the largest effect only."""
    from lmlab.edit import edit
    from lmlab.edit.trace import mlp_indirect_effects

    none = mlp_indirect_effects(model, tok, REQS, noise_samples=2, noise_scale=0.0)
    torch.testing.assert_close(none, torch.zeros(model.config.n_layers), rtol=0, atol=1e-6)
    effects = mlp_indirect_effects(model, tok, REQS, noise_samples=3, seed=5)
    torch.testing.assert_close(effects, mlp_indirect_effects(model, tok, REQS, noise_samples=3, seed=5))
    assert effects.shape == (model.config.n_layers,) and bool(torch.isfinite(effects).all())
    traced = int(mlp_indirect_effects(model, tok, REQS[:1]).argmax())
    delta = edit(model, tok, REQS[:1], method="rome", layer="trace", corpus=TEXTS, stats_dir=tmp_path,
                 v_num_grad_steps=3, context_template_length_params=((4, 5),))
    delta.revert(model)
    assert delta.names() == [f"blocks.{traced}.mlp.down_proj.weight"]
    with pytest.raises(Exception, match="layer must be a layer index or 'trace'"):
        edit(model, tok, REQS[:1], method="rome", layer="deep", corpus=TEXTS, stats_dir=tmp_path)


def test_rome_bare_update_key_puts_v_star_at_the_edited_prompt(model, tok, tmp_path):
    """update_key="bare" (the original code's denominator) makes the edited prompt's MLP output exactly v*; the
    default eq.-2 update (k* in numerator and denominator) delivers only a share of delta there when k* != k."""
    from lmlab.edit import edit

    req, hook, params = REQS[0], "blocks.1.mlp.out", ((4, 5),)
    groups = locate.context_templates(model, tok, params, 0)
    settings = locate.TargetSettings(steps=4, lr=0.5, weight_decay=0.5, clamp_norm_factor=4.0, kl_factor=0.0625)
    init, delta, _ = locate.optimise_target(model, tok, req, hook, groups, settings)
    enc = locate.encode_rows(tok, [req.prompt], [req.subject])
    out = {}
    for key in ("bare", "mean"):
        d = edit(model, tok, [req], method="rome", layer=1, update_key=key, corpus=TEXTS, stats_dir=tmp_path,
                 v_num_grad_steps=4, context_template_length_params=params)
        with torch.no_grad():
            _, acts = model.run_with_cache(enc.ids, names=[hook])
        out[key] = acts[hook][0, enc.lookup[0]].double()
        d.revert(model)
    torch.testing.assert_close(out["bare"], init + delta, rtol=1e-4, atol=1e-4)
    assert float((out["mean"] - init - delta).norm()) > 0.05 * float(delta.norm())
    with pytest.raises(Exception, match="update_key must be 'mean' or 'bare'"):
        edit(model, tok, [req], method="rome", layer=1, update_key="other", corpus=TEXTS, stats_dir=tmp_path)
