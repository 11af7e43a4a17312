"""SPIN: the fixed point (a model that already reproduces the data gets no pairs) and self-play progress."""

from __future__ import annotations

import copy

import torch

import lmlab

from lmlab.align.spin import SPINConfig, self_play_pairs, spin
from lmlab.core.generate import GenerationConfig
from lmlab.core.logprobs import sequence_logprobs
from lmlab.reference import load_reference


def _task(ref, split: str, n: int):
    tok = ref.tokenizer
    probes = ref.world.probes(split)[:n]
    prompts = [[tok.bos_id] + tok.encode(p.prompt) for p in probes]
    responses = [tok.encode(p.answer) + [tok.eos_id] for p in probes]
    return prompts, responses


def _logp(model, prompts, responses):
    rows = [p + r for p, r in zip(prompts, responses)]
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return sequence_logprobs(model, ids, prompt_lengths=torch.tensor([len(p) for p in prompts]), attention_mask=mask)


def test_fixed_point_when_the_model_reproduces_the_data():
    ref = load_reference()
    prompts, _ = _task(ref, "train", 6)
    gen = GenerationConfig(max_new_tokens=4)
    own = [row[len(p):] for p, row in zip(prompts, lmlab.generate(ref.model, prompts, gen))]
    assert self_play_pairs(ref.model, prompts, own, gen) == []
    model = copy.deepcopy(ref.model)
    history = spin(model, prompts, own, ref.tokenizer.pad_id, SPINConfig(iterations=2, generation=gen))
    assert history == [{"iteration": 0, "new_pairs": 0, "pairs": 0, "converged": True}]
    for a, b in zip(model.parameters(), ref.model.parameters()):
        assert torch.equal(a, b)


def test_self_play_raises_the_real_responses_likelihood(tmp_path):
    ref = load_reference()
    prompts, responses = _task(ref, "heldout", 12)  # held-out paraphrases: the model misses most of them
    model = copy.deepcopy(ref.model)
    gen = GenerationConfig(max_new_tokens=4)
    before = _logp(model, prompts, responses).mean().item()
    n_pairs = len(self_play_pairs(model, prompts, responses, gen))
    assert n_pairs >= 6
    history = spin(model, prompts, responses, ref.tokenizer.pad_id,
                   SPINConfig(iterations=2, steps=8, batch_size=6, lr=1e-3, generation=gen, out_dir=str(tmp_path)))
    after = _logp(model, prompts, responses).mean().item()
    assert len(history) == 2 and history[1]["pairs"] == history[1]["new_pairs"] + history[0]["new_pairs"]
    assert after > before + 0.5

    def hits(m):  # prompts whose greedy answer starts with the real answer's first token
        rows = lmlab.generate(m, prompts, gen)
        return sum(row[len(p):len(p) + 1] == r[:1] for p, r, row in zip(prompts, responses, rows))

    assert hits(model) > hits(ref.model)
