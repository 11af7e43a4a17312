"""Unlearning one country of the world (``lmlab.edit.world_slice.country_slice``) from a reference model with the
Who's-Harry-Potter recipe and gradient ascent, and the extraction attacks of "Can Sensitive Information Be Deleted
From LLMs?" before and after.

Columns: forget recall (greedy exact match on the slice's training-template probes), forget paraphrase recall
(held-out templates), retain recall (200 other facts' probes), and attack success rates: head projection (logit
lens top-k at every layer, budget k x n_layers), probability delta, paraphrase (top-k under each held-out
template), each at k = --k; single seed.

    python scripts/unlearn_table.py --model world-llama-0.9m
    python scripts/unlearn_table.py --model world-llama-0.9m --set whp.alpha=2 --set ga.steps=60
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from lmlab.data.recall import greedy_continuations, is_exact_match, recall
from lmlab.edit.attacks import (head_projection_candidates, paraphrase_candidates, probability_delta_candidates,
                                success_rate)
from lmlab.edit.unlearn import GradientAscentConfig, WhpConfig, gradient_ascent, whp_unlearn
from lmlab.edit.world_slice import country_slice
from lmlab.reference import load_reference

COLS = ["forget", "forget_paraphrase", "retain", "attack_head_projection", "attack_prob_delta", "attack_paraphrase"]


def scores(model, tok, s, k: int) -> dict[str, float]:
    para = [(q, a) for qs, a in zip(s.paraphrase_prompts, s.answers) for q in qs]
    texts = greedy_continuations(model, tok, [q for q, _ in para])
    return {
        "forget": recall(model, tok, s.forget_probes),
        "forget_paraphrase": sum(is_exact_match(t, a) for t, (_, a) in zip(texts, para)) / len(para),
        "retain": recall(model, tok, s.retain_probes),
        "attack_head_projection": success_rate(head_projection_candidates(model, tok, s.fact_prompts, k), s.answers, tok),
        "attack_prob_delta": success_rate(probability_delta_candidates(model, tok, s.fact_prompts, k), s.answers, tok),
        "attack_paraphrase": success_rate(paraphrase_candidates(model, tok, s.paraphrase_prompts, k), s.answers, tok),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-0.9m")
    p.add_argument("--country", default=None)
    p.add_argument("--k", type=int, default=2, help="top-k per layer / per paraphrase")
    p.add_argument("--set", action="append", default=[], metavar="whp.KEY=VALUE or ga.KEY=VALUE")
    p.add_argument("--methods", default="gradient_ascent,whp")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfgs = {"whp": {}, "ga": {}}
    for item in args.set:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        value = yaml.safe_load(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if group not in cfgs:
            raise SystemExit(f"--set {item}: expected whp.KEY=VALUE or ga.KEY=VALUE")
        cfgs[group][name] = value
    ref = load_reference(args.model)
    model, tok = ref.model, ref.tokenizer
    s = country_slice(ref.world, args.country)
    print(f"model {args.model}; country {s.country}: {len(s.facts)} facts, {len(s.forget_texts)} forget sentences, "
          f"{sum(map(len, s.paraphrase_prompts))} paraphrase prompts; anchors {s.anchors}; k={args.k} "
          f"(head projection budget {args.k * model.config.n_layers}); settings {cfgs}")
    print("| model | " + " | ".join(COLS) + " | seconds |")
    print("|---|" + "---|" * (len(COLS) + 1))
    base = scores(model, tok, s, args.k)
    print("| unedited | " + " | ".join(f"{base[c]:.3f}" for c in COLS) + " | |", flush=True)
    for method in args.methods.split(","):
        start = time.perf_counter()
        if method == "whp":
            out, log = whp_unlearn(model, tok, s.forget_texts, s.anchors, WhpConfig(**cfgs["whp"]))
            extra = f" (labels changed {log['labels_changed']:.2f})"
        else:
            out, log = gradient_ascent(model, tok, s.forget_texts, GradientAscentConfig(**cfgs["ga"]))
            extra = ""
        seconds = time.perf_counter() - start
        got = scores(out, tok, s, args.k)
        print(f"| {method}{extra} | " + " | ".join(f"{got[c]:.3f}" for c in COLS) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
