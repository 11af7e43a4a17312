"""LANDeRMT on the world: translation fine-tuning of a multilingual model by language-aware neurons (with routing)
vs full fine-tuning vs LoRA, in chrF on held-out parallel sentences and in forgetting of monolingual text.

The multilingual model is the one scripts/adapt_mplm_sim.py trains (seven languages, cached in ``--cache``; the
world and architecture come from ``--model``).  Translation data: the world's facts in base, lang_a and lang_b, all
six directions, formatted ``[src>tgt] <source sentence> = <target sentence><eos>``; every 5th fact is held out.
Each method trains ``--steps`` AdamW steps, one direction per step (16 pairs), loss on the target tokens only.
chrF (sacrebleu) is on greedy translations of the held-out facts, averaged over the directions; forgetting is the
LM loss (nats/token) on each language's monolingual documents before and after.

Usage: ``python scripts/adapt_landermt.py [--model world-llama-0.9m] [--steps 150] [--cache runs/adapt/multilingual]``
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import sacrebleu
import torch

import lmlab
from lmlab.adapt.landermt import (
    LandermtConfig,
    NeuronRouter,
    awareness_scores,
    classify_neurons,
    freeze_except,
    neuron_parameter_masks,
    restore_unselected,
)
from lmlab.adapt.language_family import extended_languages, language_documents, parallel_corpus
from lmlab.adapt.multilingual import MultilingualRecipe, multilingual_model, token_windows
from lmlab.peft import LoraConfig, add_adapter
from lmlab.reference import load_reference

LANGS = ("base", "lang_a", "lang_b")
DIRECTIONS = [(s, t) for s in LANGS for t in LANGS if s != t]


def encode_pair(tok, src: str, tgt: str, s_text: str, t_text: str) -> tuple[list[int], list[int]]:
    return tok.encode(f"[{src}>{tgt}] {s_text} ="), tok.encode(" " + t_text) + [tok.eos_id]


def make_batch(pairs: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T] right-padded, loss mask [B, T]: 1 where the NEXT token is a target token)."""
    T = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), T), pad)
    mask = torch.zeros(len(pairs), T)
    for r, (p, t) in enumerate(pairs):
        ids[r, : len(p) + len(t)] = torch.tensor(p + t)
        mask[r, len(p) - 1: len(p) + len(t) - 1] = 1
    return ids, mask


def masked_loss(model, ids, mask) -> torch.Tensor:
    logits = model(ids)  # [B, T, vocab]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                            reduction="none").view(ids.shape[0], -1)
    return (nll * mask[:, :-1]).sum() / mask[:, :-1].sum()


def chrf(model, tok, data, router=None) -> dict[str, float]:
    out = {}
    model.eval()
    for (src, tgt), pairs in data.items():
        prompts = [p for p, _ in pairs]
        refs = [tok.decode(t[:-1]).strip() for _, t in pairs]
        n = max(len(t) for _, t in pairs) + 2
        with torch.no_grad():
            if router is not None:
                with router.route(model, (src, tgt)):
                    gens = lmlab.generate(model, prompts, max_new_tokens=n)
            else:
                gens = lmlab.generate(model, prompts, max_new_tokens=n)
        hyps = [tok.decode([i for i in g[len(p):] if i != tok.eos_id]).strip() for g, p in zip(gens, prompts)]
        out[f"{src}>{tgt}"] = sacrebleu.corpus_chrf(hyps, [refs]).score
    out["mean"] = sum(out.values()) / len(out)
    return out


def mono_loss(model, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {code: masked_loss(model, w, torch.ones_like(w, dtype=torch.float)).item() for code, w in windows.items()}


def train(model, train_data, steps: int, lr: float, params, pad: int, seed: int, router=None, neurons=None,
          lr_router: float = 1e-2) -> float:
    """AdamW, one direction per step.  ``neurons``/``router``: LANDeRMT's selective update and routing."""
    rng = random.Random(seed)
    groups = [{"params": params, "lr": lr}]
    if router is not None:
        groups.append({"params": [router.weight], "lr": lr_router})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    model.train()
    t0 = time.time()
    for _ in range(steps):
        src, tgt = rng.choice(DIRECTIONS)
        ids, mask = make_batch(rng.sample(train_data[(src, tgt)], 16), pad)
        masks = neuron_parameter_masks(model, neurons.trainable([src, tgt])) if neurons is not None else None
        snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if masks and n in masks}
        if router is not None:
            with router.route(model, (src, tgt)):
                loss = masked_loss(model, ids, mask)
        else:
            loss = masked_loss(model, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if masks is not None:
            restore_unselected(model, masks, snapshot)
    model.eval()
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="world-llama-0.9m", help="reference model name or dir (world + architecture)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--cache", default="runs/adapt/multilingual")
    ap.add_argument("--top-fraction", type=float, default=LandermtConfig.top_fraction)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = load_reference(args.model)
    world = ref.world
    family = extended_languages(world)
    base_model, tok = multilingual_model(world, family, ref.model.config, MultilingualRecipe(steps=args.pretrain_steps),
                                         cache_dir=args.cache)
    corpus = parallel_corpus(world, {c: family[c] for c in LANGS})
    n = len(world.facts)
    test_ids = [i for i in range(n) if i % 5 == 0]
    train_ids = [i for i in range(n) if i % 5]
    pairs = {d: {i: encode_pair(tok, d[0], d[1], corpus[d[0]][i], corpus[d[1]][i]) for i in range(n)} for d in DIRECTIONS}
    train_data = {d: [pairs[d][i] for i in train_ids] for d in DIRECTIONS}
    test_data = {d: [pairs[d][i] for i in test_ids] for d in DIRECTIONS}
    windows = {c: token_windows(tok, language_documents(world, family[c]), 64) for c in LANGS}
    pad = tok.pad_id
    print(f"{len(train_ids)} training / {len(test_ids)} held-out facts x {len(DIRECTIONS)} directions; "
          f"{args.steps} steps x 16 pairs per method", flush=True)
    results = {"before": {"chrf": chrf(base_model, tok, test_data), "mono_loss": mono_loss(base_model, windows)}}
    print(f"before fine-tuning: chrF {results['before']['chrf']['mean']:.1f}, mono loss {results['before']['mono_loss']}",
          flush=True)

    # awareness from the training pairs (64 per direction), per language = mean over its directions
    per_dir = {}
    for d in DIRECTIONS:
        batches = [make_batch(train_data[d][k:k + 16], pad) for k in range(0, 64, 16)]
        per_dir[d] = awareness_scores(base_model, batches)
    scores = {x: torch.stack([s for d, s in per_dir.items() if x in d]).mean(0) for x in LANGS}
    neurons = classify_neurons(scores, LandermtConfig(top_fraction=args.top_fraction))
    n_general = int(neurons.general.sum())
    n_spec = {x: int(m.sum()) for x, m in neurons.specific.items()}
    print(f"neurons: {n_general} language-general, specific {n_spec} of {neurons.general.numel()}", flush=True)
    results["neurons"] = {"general": n_general, "specific": n_spec, "total": neurons.general.numel(),
                          "general_per_layer": neurons.general.sum(1).tolist()}
    gen = torch.Generator().manual_seed(0)
    random_neurons = copy.deepcopy(neurons)  # same counts per layer, random units
    for lang_mask in [random_neurons.general, *random_neurons.specific.values()]:
        for layer in range(lang_mask.shape[0]):
            k = int(lang_mask[layer].sum())
            lang_mask[layer] = False
            lang_mask[layer, torch.randperm(lang_mask.shape[1], generator=gen)[:k]] = True

    def run(name, lr, setup):
        model = copy.deepcopy(base_model)
        params, router, sel = setup(model)
        n_train = sum(p.numel() for p in params) if sel is None else None
        secs = train(model, train_data, args.steps, lr, params, pad, 0, router=router, neurons=sel)
        row = {"chrf": chrf(model, tok, test_data, router), "mono_loss": mono_loss(model, windows), "seconds": secs}
        if sel is not None:
            per_dir_counts = [int(sel.trainable(list(d)).sum()) * 3 * model.config.d_model for d in DIRECTIONS]
            row["trainable_params_per_direction"] = sum(per_dir_counts) / len(per_dir_counts)
        else:
            row["trainable_params"] = n_train
        results[name] = row
        print(f"{name:22s} chrF {row['chrf']['mean']:5.1f} "
              f"({', '.join(f'{k} {v:.1f}' for k, v in row['chrf'].items() if k != 'mean')}); "
              f"mono loss {', '.join(f'{k} {v:.3f}' for k, v in row['mono_loss'].items())}; {secs:.0f} s", flush=True)

    def full(model):
        return list(model.parameters()), None, None

    def lora(model):
        add_adapter(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"]))
        return [p for p in model.parameters() if p.requires_grad], None, None

    def landermt(sel, routed):
        def setup(model):
            params = freeze_except(model, neuron_parameter_masks(model, sel.trainable(list(LANGS))))
            router = NeuronRouter(sel, model.config.d_model) if routed else None
            return params, router, sel
        return setup

    run("full fine-tuning", 1e-3, full)
    run("LoRA r=8 (all linear)", 3e-3, lora)
    run("LANDeRMT", 1e-3, landermt(neurons, True))
    run("LANDeRMT, no routing", 1e-3, landermt(neurons, False))
    run("random neurons", 1e-3, landermt(random_neurons, False))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
