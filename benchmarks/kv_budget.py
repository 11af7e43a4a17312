"""Decode tokens/s and peak memory at 1K and 4K context for every KV policy against the full cache, one run.

A Llama-shaped 134M random model (benchmarks/decode.py's "llama" shape: 12 layers, 768 wide, 12 heads,
SwiGLU 2048, vocab 32000), fp32. For each context length and each cache (full, then window / sinks / h2o /
keyformer at ``--budgets`` of the prompt), in a fresh subprocess (so its peak RSS is its own):

1. prefill the random prompt in chunks of ``--chunk`` tokens (memory bounded for the policies: the cache
   grows to budget + one chunk and evicts after every chunk; the full cache holds everything),
2. time ``--new-tokens`` greedy decode steps (one forward each, argmax; prefill excluded),

and print decode tok/s, the speed-up over the full cache, the cache's allocation (k + v, MB), and the
child's peak RSS (MB). Score-based policies (h2o, keyformer) take the eager attention path on every step
(they need the probabilities); window and sinks keep SDPA.

Issue 18's target: at 4K context a 25% budget decodes >= 1.5x faster than the full cache, memory bounded.
Timing needs a quiet machine:

    python benchmarks/kv_budget.py --wait-quiet 60                # full run (1K and 4K, budgets 25%)
    python benchmarks/kv_budget.py --quick                        # smoke run, tiny model (numbers meaningless)

The retrieval-accuracy-vs-budget table (quality, not speed) is scripts/kv_retrieval_budget.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = ("window", "sinks", "h2o", "keyformer")
SHAPES = {
    "llama": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_mlp=2048),
    "tiny": dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128),
}


def child(spec: dict) -> dict:
    """One (context, policy) measurement, in this (fresh) process."""
    import resource
    import time

    import torch

    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer
    from lmlab.efficient import kv_policy

    torch.manual_seed(0)
    shape = SHAPES[spec["shape"]]
    ctx, new = spec["context"], spec["new_tokens"]
    total = ctx + spec["warmup"] + new + 1
    cfg = ModelConfig.llama_like(**shape, max_seq_len=total)
    model = Transformer(cfg).init_weights(std=0.02, seed=0).eval()
    prompt = torch.randint(0, shape["vocab_size"], (1, ctx), generator=torch.Generator().manual_seed(1))
    budget = max(8, int(spec["budget"] * ctx))  # tokens: a fraction of the prompt (no decoder declares it here)
    policy = None if spec["policy"] == "full" else kv_policy(spec["policy"], budget=budget)
    cache = model.new_cache(1, total, policy=policy)
    with torch.inference_mode():
        logits = None
        for i in range(0, ctx, spec["chunk"]):
            logits = model(prompt[:, i:i + spec["chunk"]], cache=cache)[:, -1]
        tok = logits.argmax(-1, keepdim=True)  # [1, 1]
        for _ in range(spec["warmup"]):  # steps not timed (they also grow the cache to its steady size)
            tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new):
            tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
        seconds = time.perf_counter() - t0
    return {"tok_s": new / seconds, "cache_mb": (cache.k.nbytes + cache.v.nbytes) / 2**20,
            "slots": cache.capacity, "kept": int(cache.n_slots.max()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed for {spec}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, contexts 64/128, 4 new tokens")
    p.add_argument("--contexts", default="1024,4096")
    p.add_argument("--budgets", default="0.25")
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.quick:
        args.contexts, args.new_tokens, args.warmup, args.chunk, args.shape = "64,128", 4, 1, 32, "tiny"
    sys.path.insert(0, str(HERE))
    from decode import machine_info, wait_for_quiet  # noqa: E402

    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads; "
          f"shape {args.shape}, fp32, prefill chunks of {args.chunk}, {args.new_tokens} timed decode steps", flush=True)
    print("| context | cache | budget | decode tok/s | vs full | cache slots | cache MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for ctx in [int(c) for c in args.contexts.split(",")]:
        settings = [("full", 1.0)] + [(name, float(b)) for b in args.budgets.split(",")
                                      for name in args.policies.split(",")]
        base = None
        for name, budget in settings:
            if args.wait_quiet:
                wait_for_quiet(args.wait_quiet)
            spec = dict(shape=args.shape, context=ctx, new_tokens=args.new_tokens, warmup=args.warmup,
                        chunk=args.chunk, policy=name, budget=budget)
            r = measure(spec)
            base = r["tok_s"] if name == "full" else base
            row = {**spec, **r, "x_full": r["tok_s"] / base}
            rows.append(row)
            label = "-" if name == "full" else f"{budget:.0%}"
            print(f"| {ctx} | {name} | {label} | {r['tok_s']:.1f} | {row['x_full']:.2f}x | {r['slots']} | "
                  f"{r['cache_mb']:.1f} | {r['peak_rss_mb']:.0f} |", flush=True)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
