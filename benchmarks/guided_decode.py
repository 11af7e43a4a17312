"""Guided-decoding cost, side by side: tokens/s of plain decoding, ActAdd, the ICL state vector, GeDi, GenARM,
VAS, proxy-tuning and forbidden strings on the same base model (issue 16's targets: GeDi with a guide a quarter
of the base's size at <= 1.5x the plain decode time; ActAdd <= 1.05x).

Base: a random Llama-style model (d_model 512, 8 layers, vocab 8192, 27.4M parameters). Every second model
(GeDi guide, GenARM's ARM, VAS's value estimator, proxy-tuning's tuned/untuned pair) is the same family at
d_model 256 with 6 layers, about a quarter of the base's parameters (the script prints the exact ratio).
GeDi is also timed with a guide of the same quarter size but half the base's depth (d_model 320, 4 layers,
0.26x): the paper's guide, GPT-2 medium (24 layers) for GPT-2 XL (48 layers), has half its base's depth too,
and at this size a decode step's cost follows the number of layers (per-op dispatch) more than the parameters
(profile, session 5: guide forward on its 2B rows 0.45x of the base's with 6 layers, 0.36x with 4).
Batch 4, 32-token prompts, 64 new tokens, greedy, no early stop; methods are timed rep by rep in alternation so
load from other processes hits them alike; the median is reported. Run on a quiet machine:

    python benchmarks/guided_decode.py            # a few minutes on 2 cores
    python benchmarks/guided_decode.py --quick    # smoke run (tiny shapes, 1 rep): checks it runs, not a measurement
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from lmlab.control import VAS, ForbidStrings, GeDi, GenARM, ProxyTuning, ValueModel
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.steer import StateVector, SteeringVector, model_fingerprint


def model(d: int, layers: int, seed: int, vocab: int) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=8, n_kv_heads=4,
                                 max_seq_len=256)
    return Transformer(cfg).init_weights(seed=seed).eval()


class _CharTokenizer:
    """Decodes id i to a fixed short string: enough for ForbidStrings' cost."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="tiny shapes and one rep: a smoke run, not a measurement")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.quick:
        vocab, new, reps, (d, L), (gd, gL) = 512, 4, 1, (64, 2), (32, 2)
    else:
        vocab, new, reps, (d, L), (gd, gL) = 8192, 64, 5, (512, 8), (256, 6)
    base = model(d, L, 0, vocab)
    small_a, small_b = model(gd, gL, 1, vocab), model(gd, gL, 2, vocab)
    value = ValueModel(model(gd, gL, 3, vocab)).eval()
    shallow = model(64 if args.quick else 320, max(1, L // 2), 4, vocab)  # quarter size, half the depth
    ratio = small_a.num_parameters() / base.num_parameters()
    shallow_ratio = shallow.num_parameters() / base.num_parameters()
    print(f"base {base.num_parameters():,} parameters; each second model {small_a.num_parameters():,} ({ratio:.2f}x); "
          f"half-depth GeDi guide {shallow.num_parameters():,} ({shallow_ratio:.2f}x)")
    prompts = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(0)).tolist()
    vec = SteeringVector(torch.randn(d) * 0.1, "blocks.1.resid_pre", model_fingerprint(base))
    icv = StateVector(torch.randn(max(1, L // 2), 1, d) * 0.1, model_fingerprint(base))
    methods = {
        "plain": lambda: ((), contextlib.nullcontext()),
        "actadd (all positions)": lambda: ((), vec.apply(base, coeff=1.0, positions="all")),
        "icl state vector": lambda: ((), icv.apply(base)),
        "gedi": lambda: ((GeDi(small_a, [1], [2], base=base),), contextlib.nullcontext()),
        "gedi (half-depth guide)": lambda: ((GeDi(shallow, [1], [2], base=base),), contextlib.nullcontext()),
        "genarm (1 ARM)": lambda: ((GenARM([small_a], base=base),), contextlib.nullcontext()),
        "vas (top-10)": lambda: ((VAS(value, beta=1.0, top_k=10, base=base),), contextlib.nullcontext()),
        "proxy-tuning (2 small)": lambda: ((ProxyTuning(small_a, small_b, base=base),), contextlib.nullcontext()),
        "forbid 2 strings": lambda: ((ForbidStrings(_CharTokenizer(), ["abc", "zzq"], vocab),),
                                     contextlib.nullcontext()),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    with torch.inference_mode():
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
    print(json.dumps({"second_model_ratio": ratio, "half_depth_guide_ratio": shallow_ratio, "rows": rows}))


if __name__ == "__main__":
    main()
