"""Editing time on a reference model: key-statistics time (uncached), and time per edit for 1 and 100 edits with
the statistics cached (MEMIT in one batch; ROME, whose requests are applied one after another).

Target (issue 17): 100 MEMIT edits on the reference model, statistics cached, under 30 s on 2 cores. EasyEdit
publishes no CPU timings for a like-for-like comparison; its MEMIT on GPT-J reads 100,000 Wikipedia samples for
the statistics (hours the first time) -- here the corpus is the world's text.

Run on a quiet machine (timings under load mean nothing)::

    python benchmarks/edit_timing.py --model world-llama-0.9m --threads 2
    python benchmarks/edit_timing.py --smoke          # a seconds-long check that the script runs, not a timing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from lmlab.edit import edit
from lmlab.edit.evaluate import world_edits
from lmlab.edit.stats import second_moments
from lmlab.reference import load_reference


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-0.9m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 100])
    p.add_argument("--methods", default="memit,rome")
    p.add_argument("--smoke", action="store_true", help="tiny settings (1 and 3 edits, 2 steps): checks the script")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ref = load_reference(args.model)
    model, tok = ref.model, ref.tokenizer
    docs = ref.world.training_documents()
    counts = [1, 3] if args.smoke else args.counts
    fast = dict(v_num_grad_steps=2, context_template_length_params=((4, 5),)) if args.smoke else {}
    rows = []
    with tempfile.TemporaryDirectory() as stats_dir:
        layers = sorted({*range(model.config.n_layers)})
        n_keys = 2000 if args.smoke else 100000
        _, seconds = timed(lambda: second_moments(model, tok, layers, docs, n_keys, stats_dir))
        rows.append({"what": f"second moments, {len(layers)} layers, up to {n_keys} keys (uncached)", "seconds": seconds})
        for method in args.methods.split(","):
            for n in counts:
                reqs = [e.request for e in world_edits(ref.world, n, seed=0)]
                delta, seconds = timed(lambda: edit(model, tok, reqs, method=method, corpus=docs, stats_dir=stats_dir,
                                                    mom2_n_samples=n_keys, **fast))
                delta.revert(model)
                rows.append({"what": f"{method}, {n} edit(s), statistics cached", "seconds": seconds,
                             "seconds_per_edit": seconds / n})
    print(f"model {args.model}, {args.threads} thread(s){' (SMOKE: not a timing)' if args.smoke else ''}")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
