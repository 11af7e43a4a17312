"""One decode step of lmlab, taken apart: aten op counts per forward, median step time, Python-level profile.

Builds benchmarks/quant_decode.py's GPT-2-124M- (or Llama-124M-) shaped random model, optionally weight-only
quantized (``--bits 4``: int4 g128 with an int8 head, the ``lmlab-int4`` row of quant_decode.py), prefills a
``--prompt``-token prompt into a KV cache and then times bare decode forwards ``model(token, cache=cache)``
(no sampling, no Decoder bookkeeping), so the numbers are the core's fixed cost per token plus the weight
kernels. It prints

- the aten ops per decode forward (deterministic: compare before/after a change on any machine),
- the median decode-forward time over ``--steps`` forwards x ``--reps`` (relative only on a shared machine),
- with ``--cprofile``: the Python functions by own time over the decode forwards (the GEMV kernel shows up as
  the builtin ``int4_gemv_a8`` / ``int8_gemv_a8``, the rest is the core's overhead).

The quantized model is cached under ``--cache-dir`` (so repeated runs skip the build).

    python benchmarks/decode_step_profile.py --model gpt2 --bits 4 --threads 1 --cprofile
    python benchmarks/decode_step_profile.py --model gpt2 --bits 32 --ops-only
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_decode import build_model  # noqa: E402


def load_model(name: str, bits: int, cache_dir: Path):
    """The model, built once per (shape, bits) and reloaded from ``cache_dir`` afterwards."""
    import lmlab
    from lmlab.efficient.quantization import quantize

    where = cache_dir / f"{name}-{bits}"
    if not (where / "config.json").exists():
        with tempfile.TemporaryDirectory() as d:
            build_model(name).save_pretrained(d)
            model = lmlab.load(d)
        if bits != 32:
            model = quantize(model, bits=bits, group_size=128 if bits == 4 else None)
        lmlab.save(model, where)
    return lmlab.load(where)


def decode_forwards(model, prompt_len: int, steps: int, seed: int = 0):
    """A prefilled cache and a function running ``steps`` greedy decode forwards on it (from scratch each call)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=g)

    def run(timings: list[float] | None = None, during=None) -> list[torch.Tensor]:
        cache = model.new_cache(1, prompt_len + steps + 1)
        logits = model(prompt, cache=cache)[:, -1]
        out = []
        if during is not None:
            during.start()
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)  # [1, 1]
            t0 = time.thread_time()  # CPU time: on a shared machine, time waiting for a core is not counted
            logits = model(token, cache=cache)[:, -1]
            if timings is not None:
                timings.append(time.thread_time() - t0)
            out.append(token)
        if during is not None:
            during.stop()
        return out

    return run


def op_counts(run, steps: int) -> dict[str, float]:
    """aten ops per decode forward, profiled over the decode loop only (one ``aten::argmax`` per step is the
    greedy choice, outside the forward)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    with torch.no_grad():
        run(during=prof)
    return {e.key: e.count / steps for e in prof.key_averages() if e.key.startswith("aten::")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "llama", "tiny-gpt2", "tiny-llama"])
    p.add_argument("--bits", type=int, default=4, choices=[4, 8, 32], help="32 = fp32 (not quantized)")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops-only", action="store_true", help="op counts only, no timing")
    p.add_argument("--cprofile", action="store_true", help="also a Python-level profile of the decode forwards")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmlab_decode_step_models")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.bits, args.cache_dir)
    run = decode_forwards(model, args.prompt, args.steps)
    with torch.no_grad():
        run()  # warm-up: kernel build, plans, fused weights
    per = op_counts(run, args.steps)
    print(f"# {args.model}, {'fp32' if args.bits == 32 else f'int{args.bits}'}, {args.threads} thread(s), "
          f"{args.prompt}-token prompt, aten ops per decode forward: {sum(per.values()):.0f}")
    for name, n in sorted(per.items(), key=lambda kv: -kv[1])[:args.rows]:
        print(f"  {name:45s} {n:8.1f}")
    if args.ops_only:
        return 0
    medians = []
    for _ in range(args.reps):
        timings: list[float] = []
        with torch.no_grad():
            run(timings)
        medians.append(statistics.median(timings) * 1e3)
    print(f"median decode forward, CPU time: {statistics.median(medians):.2f} ms (per rep: "
          f"{', '.join(f'{m:.2f}' for m in medians)})")
    if args.cprofile:
        prof = cProfile.Profile()
        prof.start, prof.stop = prof.enable, prof.disable  # over the decode loop only
        with torch.no_grad():
            run(during=prof)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
