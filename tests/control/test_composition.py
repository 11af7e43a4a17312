"""Composition, once: a LoRA-adapted model, steered on one request, with a GeDi guide and a forbidden string, in
one batched generation; every row equals its own solo run (so nothing leaks between rows or methods)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmlab.control import ForbidStrings, GeDi
from lmlab.core.generate import generate
from lmlab.peft import LoraConfig, add_adapter
from lmlab.reference import load_reference
from lmlab.steer import actadd

PROMPTS = ["Trodina Shoba was born in", "The home of Serella Thahik is in", "Trodina Shoba works as a"]


@pytest.fixture(scope="module")
def setup():
    ref = load_reference()
    model = copy.deepcopy(ref.model)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapters" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)  # a "tuned" adapter: B is no longer zero
    model.eval()
    return ref, model


def run(ref, model, prompts, steer_rows, seed=4):
    tok = ref.tokenizer
    vec = actadd(model, tok, " Stinok", " Gramotrek", layer=1)
    procs = [GeDi(ref.model, tok.encode("Stinok"), tok.encode("Gramotrek"), base=model),
             ForbidStrings(tok, ["Pimel"], model.config.vocab_size)]
    rows = [tok.encode(p) for p in prompts]
    with vec.apply(model, coeff=2.0, positions="all", rows=steer_rows):
        return generate(model, rows, max_new_tokens=10, temperature=1.0, top_k=40, seed=seed, stop_token_ids=[],
                        logits_processors=procs)


def test_lora_steered_gedi_batch_equals_solo_runs(setup):
    ref, model = setup
    batch = run(ref, model, PROMPTS, steer_rows=[1])
    for i, p in enumerate(PROMPTS):
        solo = run(ref, model, [p], steer_rows=[0] if i == 1 else [], seed=4 + i)
        assert batch[i] == solo[0], i
    unsteered = run(ref, model, PROMPTS, steer_rows=[])
    assert batch[0] == unsteered[0] and batch[2] == unsteered[2] and batch[1] != unsteered[1]
    assert all("Pimel" not in ref.tokenizer.decode(o) for o in batch)
