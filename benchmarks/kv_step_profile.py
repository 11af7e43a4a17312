"""Where one decode step's time goes for each KV policy: thread time accumulated in the policy's and the
cache's methods and in attention, per step, against the full cache's step (one thread).

    python benchmarks/kv_step_profile.py --shape mha-9m --context 4096 --budget 1024 --steps 129

Timers wrap methods (``observe``, ``evict``, ``_flush``, the Keyformer noise, ``KVCache.compact`` /
``reposition`` / ``begin`` / ``mask``, SDPA and the explicit attention path); nested timers overlap
(``attn._eager`` includes ``observe``; ``evict`` is the selection and includes ``cache.compact`` and
``cache.reposition``; ``flush`` is the batched scoring after the last layer). Use ``--steps``
of at least slack + 1 so the amortised compaction is in the figure. Thread time still varies with other
load on a shared machine: compare parts within one run, not runs.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_budget import SHAPES, model_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="mha-9m", choices=sorted(SHAPES))
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--budget", type=int, default=1024, help="tokens kept by every policy")
    p.add_argument("--steps", type=int, default=129)
    p.add_argument("--policies", default="full,window,sinks,h2o,keyformer")
    p.add_argument("--chunk", type=int, default=256)
    args = p.parse_args(argv)

    import lmlab.efficient.kv_policies as kp
    from lmlab.core.cache import KVCache
    from lmlab.core.model import Attention, Transformer
    from lmlab.efficient import kv_policy

    torch.set_num_threads(1)
    spent: collections.Counter = collections.Counter()

    def timed(owner, name, label):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.thread_time() - t0
        setattr(owner, name, wrapper)

    timed(kp.BudgetPolicy, "evict", "evict")
    timed(kp.AccumulatedScorePolicy, "observe", "observe")
    timed(kp.AccumulatedScorePolicy, "_flush", "flush")
    timed(kp, "layers_gumbel_noise", "keyformer noise")
    for name in ("compact", "reposition", "begin", "mask"):
        timed(KVCache, name, f"cache.{name}")
    timed(Attention, "_eager", "attn._eager")
    timed(F, "scaled_dot_product_attention", "sdpa")  # the model calls it through F.

    total = args.context + args.steps + 8
    cfg = model_config(args.shape, total)
    model = Transformer(cfg).init_weights(std=0.02, seed=0).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(1))
    for name in args.policies.split(","):
        policy = None if name == "full" else kv_policy(name, budget=args.budget)
        cache = model.new_cache(1, total, policy=policy)
        with torch.inference_mode():
            for i in range(0, args.context, args.chunk):
                logits = model(prompt[:, i:i + args.chunk], cache=cache)[:, -1]
            tok = logits.argmax(-1, keepdim=True)
            spent.clear()
            t0 = time.thread_time()
            for _ in range(args.steps):
                tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
            step = (time.thread_time() - t0) / args.steps
        parts = ", ".join(f"{k} {v / args.steps * 1e3:.2f}" for k, v in sorted(spent.items()))
        print(f"{name}: {step * 1e3:.2f} ms/step; {parts}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
