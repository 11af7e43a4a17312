"""mPLM-Sim on the world: language similarity from a multilingual model vs the known family tree, and source-language
selection for zero-shot cross-lingual transfer.

A model is trained from scratch on the world's facts in the seven languages of ``lmlab.adapt.language_family``
(cached in ``--cache``; scripts/adapt_landermt.py reuses it).  The architecture and the world come from ``--model``.
Then, per layer: the mPLM-Sim matrix over the 326 multi-parallel fact sentences and its Spearman correlation with
minus the tree distance.  Transfer task: relation classification (9 relations) by a logistic-regression probe on
the frozen, mean-pooled representation, trained on the even-indexed facts in a source language and tested on the
odd-indexed facts in the target language.  For each target, the source chosen by mPLM-Sim (same layer) is compared
with the one chosen by the tree distance (ties: the mean over the tied sources), the best source (oracle) and the
mean over all sources.

Usage: ``python scripts/adapt_mplm_sim.py [--model world-llama-0.9m] [--steps 300] [--cache runs/adapt/multilingual]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from lmlab.adapt.language_family import extended_languages, parallel_corpus, tree_distance
from lmlab.adapt.mplm_sim import language_similarity, rank_correlation, select_source, sentence_representations
from lmlab.adapt.multilingual import MultilingualRecipe, multilingual_model
from lmlab.reference import load_reference


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   n_classes: int) -> float:
    """Multinomial logistic regression (L2 1e-3, LBFGS), features standardised with the training set's stats."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mu) / sd, (test_x - mu) / sd
    w = torch.zeros(xs.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, train_y) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((xt @ w + b).argmax(-1) == test_y).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="world-llama-0.9m", help="reference model name or dir (world + architecture)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cache", default="runs/adapt/multilingual")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = load_reference(args.model)
    world = ref.world
    languages = extended_languages(world)
    codes = list(languages)
    model, tok = multilingual_model(world, languages, ref.model.config, MultilingualRecipe(steps=args.steps),
                                    cache_dir=args.cache)
    parallel = parallel_corpus(world, languages)
    sim = language_similarity(model, tok, parallel)
    dist = np.array([[tree_distance(languages, a, b) for b in codes] for a in codes], dtype=float)
    n_layers = sim.matrix.shape[0]
    rhos = [rank_correlation(sim.at(layer), -dist) for layer in range(n_layers)]
    print(f"\nSpearman(mPLM-Sim, -tree distance) over {len(codes) * (len(codes) - 1) // 2} language pairs, per layer "
          "(0 = embeddings): " + "  ".join(f"L{layer}: {r:+.3f}" for layer, r in enumerate(rhos)))
    best = int(np.argmax(rhos))
    for layer in sorted({best, n_layers - 1}):
        print(f"\nsimilarity matrix, layer {layer}:")
        print("             " + " ".join(f"{c[:12]:>12s}" for c in codes))
        for i, c in enumerate(codes):
            print(f"{c:>12s} " + " ".join(f"{v:12.3f}" for v in sim.at(layer)[i]))
    # zero-shot transfer: relation classification from one language to another
    relations = sorted(world.relations)
    labels = torch.tensor([relations.index(f.relation) for f in world.facts])
    reps = {c: sentence_representations(model, tok, parallel[c]) for c in codes}  # [L+1, N, d]
    train_idx, test_idx = torch.arange(0, len(labels), 2), torch.arange(1, len(labels), 2)
    results = {"spearman_per_layer": rhos, "languages": codes, "distance": dist.tolist(),
               "similarity": sim.matrix.tolist(), "transfer": {}}
    print(f"\nzero-shot transfer (relation probe, {len(relations)} classes, {len(train_idx)} train / {len(test_idx)} "
          "test facts), mean accuracy over the 7 targets:")
    for layer in range(1, n_layers):
        acc = np.zeros((len(codes), len(codes)))  # [source, target]
        for i, s in enumerate(codes):
            for j, t in enumerate(codes):
                acc[i, j] = probe_accuracy(reps[s][layer][train_idx], labels[train_idx], reps[t][layer][test_idx],
                                           labels[test_idx], len(relations))
        by_sim, by_tree, oracle, mean = [], [], [], []
        for j, t in enumerate(codes):
            others = [i for i in range(len(codes)) if i != j]
            chosen = codes.index(select_source(sim.at(layer), codes, t, [codes[i] for i in others]))
            by_sim.append(acc[chosen, j])
            dmin = min(dist[i, j] for i in others)
            by_tree.append(np.mean([acc[i, j] for i in others if dist[i, j] == dmin]))
            oracle.append(max(acc[i, j] for i in others))
            mean.append(np.mean([acc[i, j] for i in others]))
        row = {"mplm_sim": float(np.mean(by_sim)), "tree_distance": float(np.mean(by_tree)),
               "oracle": float(np.mean(oracle)), "mean_source": float(np.mean(mean)),
               "in_language": float(np.mean(np.diag(acc))), "accuracy": acc.tolist()}
        results["transfer"][layer] = row
        print(f"  layer {layer}: source by mPLM-Sim {row['mplm_sim']:.3f} | by tree distance {row['tree_distance']:.3f}"
              f" | oracle {row['oracle']:.3f} | mean source {row['mean_source']:.3f} | in-language {row['in_language']:.3f}")
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
