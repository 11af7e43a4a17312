"""Streaming perplexity of the reference model under each KV policy at 100 / 50 / 25 / 10% of a 128-token window.

Each world-text window is fed one token at a time through a KV cache governed by the policy (budget in tokens
= fraction x 128, so evictions start once the cache holds that many), and every next token is scored: the
cost of forgetting, token by token. A proxy for long-context retrieval (the shipped reference model was not
trained on the retrieval tasks of data/world/longcontext.py, so its retrieval accuracy is ~0 at any budget).
Writes a PNG next to the table.  Not a timing benchmark.

    python benchmarks/kv_budget.py --windows 8 --png docs/kv_budget.png
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from lmlab.efficient import kv_policy
from lmlab.efficient.calibration import token_stream, windows
from lmlab.reference import load_reference

POLICIES = ("window", "sinks", "h2o", "keyformer")
FRACTIONS = (1.0, 0.5, 0.25, 0.1)


@torch.no_grad()
def streaming_ppl(model, ids: torch.Tensor, policy) -> float:
    B, T = ids.shape
    cache = model.new_cache(B, T, policy=policy)
    nll, count = 0.0, 0
    for t in range(T - 1):
        logits = model(ids[:, t:t + 1], cache=cache)[:, -1].float()  # [B, V]
        nll += torch.nn.functional.cross_entropy(logits, ids[:, t + 1], reduction="sum").item()
        count += B
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--png", type=Path, default=None)
    args = p.parse_args(argv)
    ref = load_reference()
    T = ref.model.config.max_seq_len
    ids = windows(token_stream(ref.tokenizer, ref.world.training_documents()), T)[:args.windows]
    table = {}
    for name in POLICIES:
        for frac in FRACTIONS:
            budget = max(2, round(frac * T)) if frac < 1 else T
            if name == "sinks" and budget <= 4:
                budget = 5
            table[name, frac] = streaming_ppl(ref.model, ids, kv_policy(name, budget=budget))
            print(f"# {name} {frac:.0%} ({budget} tokens): {table[name, frac]:.3f}", flush=True)
    print(f"reference model, {len(ids)} windows x {T} tokens, fed one token at a time")
    print("| policy | " + " | ".join(f"{f:.0%} ({max(2, round(f * T)) if f < 1 else T} tok)" for f in FRACTIONS) + " |")
    print("|---|" + "---|" * len(FRACTIONS))
    for name in POLICIES:
        print(f"| {name} | " + " | ".join(f"{table[name, f]:.3f}" for f in FRACTIONS) + " |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name in POLICIES:
            ax.plot([100 * f for f in FRACTIONS], [table[name, f] for f in FRACTIONS], marker="o", label=name)
        ax.set_xlabel("KV budget (% of the 128-token window)")
        ax.set_ylabel("streaming perplexity")
        ax.invert_xaxis()
        ax.legend()
        fig.tight_layout()
        tmp = args.png.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
