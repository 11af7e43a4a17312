"""LANDeRMT: the awareness score equals an independent autograd derivation, the neuron split, selective updates
that leave every other weight bit-identical, and routing that starts as the identity and acts per row."""

from __future__ import annotations

import pytest
import torch

from lmlab.adapt.landermt import (
    LandermtConfig,
    NeuronRouter,
    awareness_scores,
    classify_neurons,
    freeze_except,
    neuron_parameter_masks,
    restore_unselected,
)
from lmlab.core.config import ModelConfig
from lmlab.core.model import Transformer
from lmlab.errors import LmlabError


def tiny(seed: int = 0) -> Transformer:
    config = ModelConfig(model_type="llama", vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_mlp=48,
                         max_seq_len=32, mlp_type="gated", activation="silu", pad_token_id=0)
    return Transformer(config).init_weights(std=0.2, seed=seed)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (3, 9), generator=g)  # [3, 9]
    mask = torch.zeros(3, 9)
    mask[0, 3:8] = 1  # uneven target spans; row 2 ends with padding
    mask[1, 5:8] = 1
    mask[2, 2:5] = 1
    ids[2, 6:] = 0
    return ids, mask


def test_awareness_equals_derivative_of_a_neuron_scale():
    """|d L_example / d s| at s = 1, where s scales one neuron at every position, is the Taylor score."""
    model = tiny()
    ids, mask = batch()
    scores = awareness_scores(model, [(ids, mask)])  # [2, 48]
    assert scores.shape == (2, 48)
    for layer, unit in [(0, 3), (1, 17), (1, 40)]:
        per_example = []
        for r in range(3):
            s = torch.ones((), requires_grad=True)

            def scale(a, name, s=s, unit=unit):
                factor = torch.ones(a.shape[-1])
                factor = torch.where(torch.arange(a.shape[-1]) == unit, s, factor)
                return a * factor

            with model.hooks([(f"blocks.{layer}.mlp.post", scale)]):
                logits = model(ids[r:r + 1])
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[r, 1:], reduction="none")
            (g,) = torch.autograd.grad((nll * mask[r, :-1]).sum(), s)
            per_example.append(g.abs().item())
        assert scores[layer, unit].item() == pytest.approx(sum(per_example) / 3, rel=1e-4, abs=1e-7)


def test_classify_neurons_general_is_the_intersection():
    a = torch.tensor([[5.0, 4, 3, 0, 0, 0], [0, 0, 0, 1, 2, 3]])
    b = torch.tensor([[5.0, 0, 3, 4, 0, 0], [0, 0, 0, 1, 2, 3]])
    c = torch.tensor([[5.0, 4, 0, 0, 0, 3], [3, 2, 1, 0, 0, 0]])
    n = classify_neurons({"a": a, "b": b, "c": c}, LandermtConfig(top_fraction=0.5))  # top 3 of 6 per layer
    assert n.general.tolist() == [[True, False, False, False, False, False], [False] * 6]
    assert n.specific["a"].tolist() == [[False, True, True, False, False, False], [False, False, False, True, True, True]]
    assert n.specific["c"].tolist() == [[False, True, False, False, False, True], [True, True, True, False, False, False]]
    for lang in "abc":
        assert not (n.specific[lang] & n.general).any()
    assert n.trainable(["a", "c"]).sum().item() == 1 + 5 + 5 - 1  # union: layer 0 neuron 1 is in both
    with pytest.raises(LmlabError, match="top_fraction"):
        LandermtConfig(top_fraction=0.0)
    with pytest.raises(LmlabError, match="unknown language"):
        n.trainable(["zz"])


def test_selective_training_changes_only_the_selected_neurons():
    model = tiny()
    before_all = {k: v.clone() for k, v in model.state_dict().items()}
    neurons = torch.zeros(2, 48, dtype=torch.bool)
    neurons[0, [1, 7]] = True
    neurons[1, [30]] = True
    masks = neuron_parameter_masks(model, neurons)
    assert set(masks) == {f"blocks.{i}.mlp.{p}.weight" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")}
    params = freeze_except(model, masks)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids, mask = batch()
    for step in range(3):
        if step == 2:  # a different selection for the last step: Adam's momentum must not move the old neurons
            neurons = torch.zeros(2, 48, dtype=torch.bool)
            neurons[1, [5]] = True
            masks = neuron_parameter_masks(model, neurons)
        snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if n in masks}
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        restore_unselected(model, masks, snapshot)
        if step == 1:
            after_two = {k: v.clone() for k, v in model.state_dict().items()}
    after = model.state_dict()
    for name, value in after.items():
        if ".mlp." not in name:
            assert torch.equal(value, before_all[name]), name  # attention, norms, embeddings untouched
    w = "blocks.0.mlp.up_proj.weight"
    changed_rows = (after_two[w] != before_all[w]).any(1).nonzero().flatten().tolist()
    assert changed_rows == [1, 7]
    d = "blocks.1.mlp.down_proj.weight"
    assert (after_two[d] != before_all[d]).any(0).nonzero().flatten().tolist() == [30]
    # the third step moved only layer 1 neuron 5
    assert torch.equal(after["blocks.0.mlp.up_proj.weight"], after_two["blocks.0.mlp.up_proj.weight"])
    moved = (after["blocks.1.mlp.gate_proj.weight"] != after_two["blocks.1.mlp.gate_proj.weight"]).any(1)
    assert moved.nonzero().flatten().tolist() == [5]


def test_routing_starts_as_identity_and_acts_per_row():
    model = tiny().eval()
    scores = {x: torch.rand(2, 48, generator=torch.Generator().manual_seed(i)) for i, x in enumerate(["p", "q", "r"])}
    neurons = classify_neurons(scores, LandermtConfig(top_fraction=0.25))
    router = NeuronRouter(neurons, d_model=32)
    ids, _ = batch()
    with torch.no_grad():
        base = model(ids)
        with router.route(model, ("p", "q")):
            assert torch.equal(model(ids), base)  # zero gates: exactly the base model
        router.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        with router.route(model, [("p", "q"), ("r",), ("p", "q")]):
            mixed = model(ids)
        with router.route(model, ("r",)):
            alone_r = model(ids[1:2])
        with router.route(model, ("p", "q")):
            alone_pq = model(ids)
    assert not torch.allclose(mixed[0], base[0], atol=1e-4)  # the gates act
    torch.testing.assert_close(mixed[1:2], alone_r, rtol=1e-5, atol=1e-5)  # each row its own languages
    torch.testing.assert_close(mixed[[0, 2]], alone_pq[[0, 2]], rtol=1e-5, atol=1e-5)
    with pytest.raises(LmlabError, match="unknown language"):
        with router.route(model, ("zz",)):
            pass
