"""Guided-decoding cost: tokens/s of ActAdd, GeDi, GenARM, proxy-tuning and forbidden strings relative to plain
decoding of the same model (issue 16's targets: GeDi with a guide a quarter of the base's size at <= 1.5x the
plain decode time; ActAdd <= 1.05x).

Base: a random Llama-style model (d_model 512, 8 layers, vocab 8192); guides/proxies: the same shape at d_model
128 (a quarter of the width, ~1/16 of the non-embedding weights). Batch 4, 32-token prompts, 64 new tokens,
greedy, no early stop; methods are timed rep by rep in alternation so load from other processes hits them alike;
the median is reported. Run on a quiet machine:

    python benchmarks/guided_decode.py            # ~2-3 minutes on 2 cores
    python benchmarks/guided_decode.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from lmlab.control import ForbidStrings, GeDi, GenARM, ProxyTuning
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.steer import SteeringVector, model_fingerprint


def model(d: int, seed: int, vocab: int) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=256)
    return Transformer(cfg).init_weights(seed=seed).eval()


class _CharTokenizer:
    """Decodes id i to a fixed short string: enough for ForbidStrings' cost."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    vocab, new, reps = 8192, (16 if args.quick else 64), (1 if args.quick else 5)
    base, small_a, small_b = model(512, 0, vocab), model(128, 1, vocab), model(128, 2, vocab)
    prompts = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(0)).tolist()
    vec = SteeringVector(torch.randn(512) * 0.1, "blocks.2.resid_pre", model_fingerprint(base))
    methods = {
        "plain": lambda: ((), contextlib.nullcontext()),
        "actadd (all positions)": lambda: ((), vec.apply(base, coeff=1.0, positions="all")),
        "gedi (guide d=128)": lambda: ((GeDi(small_a, [1], [2], base=base),), contextlib.nullcontext()),
        "proxy-tuning (2 x d=128)": lambda: ((ProxyTuning(small_a, small_b, base=base),), contextlib.nullcontext()),
        "genarm (1 ARM d=128)": lambda: ((GenARM([small_a], base=base),), contextlib.nullcontext()),
        "forbid 2 strings": lambda: ((ForbidStrings(_CharTokenizer(), ["abc", "zzq"], vocab),),
                                     contextlib.nullcontext()),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for rep in range(reps + 1):  # rep 0 warms up
        for name, make in methods.items():
            procs, ctx = make()
            with ctx:
                t0 = time.perf_counter()
                generate(base, prompts, max_new_tokens=new, stop_token_ids=[], logits_processors=procs)
                dt = time.perf_counter() - t0
            if rep:
                times[name].append(dt)
    plain = statistics.median(times["plain"])
    rows = {k: {"seconds": statistics.median(v), "tokens_per_s": 4 * new / statistics.median(v),
                "relative_time": statistics.median(v) / plain} for k, v in times.items()}
    print("| method | tok/s | time vs plain |\n|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['tokens_per_s']:.0f} | {r['relative_time']:.2f}x |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
