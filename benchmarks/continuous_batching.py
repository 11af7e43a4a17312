"""Continuous batching vs one request at a time: 16 staggered requests through ``lmlab.core.decoder.Decoder``.

Request i (prompt of 16-64 tokens, 32-128 new tokens, greedy, no early stop) arrives at ``i * interval``.
Continuous batching adds each request to the running batch as soon as it has arrived (its own prefill, then
it decodes with the others; finished rows leave). The baseline serves the same requests first come first
served, one at a time (batch 1, same Decoder). Both see the same arrival times and the same weights; the
tokens of every request must be identical in both modes (checked, greedy).

Reported side by side: aggregate throughput (new tokens / time from the first arrival to the last finish),
and per request its time to first token and latency (finish - arrival).

    python benchmarks/continuous_batching.py                  # Llama-shaped 134M model, fp32 (run on a quiet machine)
    python benchmarks/continuous_batching.py --model tiny --quick   # smoke run (seconds)
    python benchmarks/continuous_batching.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

from lmlab.core.config import ModelConfig
from lmlab.core.decoder import Decoder
from lmlab.core.model import Transformer

MODELS = {
    # the Llama-shaped model of benchmarks/decode.py: 12 layers, 768 wide, 12 heads, SwiGLU 2048, vocab 32000
    "llama": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, d_mlp=2048, max_seq_len=2048,
                  tie_embeddings=False),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, d_mlp=128, max_seq_len=512),
}


@dataclass
class Request:
    prompt: list[int]
    max_new: int
    arrival: float  # seconds after the start
    first_token: float | None = None
    finish: float | None = None
    tokens: list[int] = field(default_factory=list)


def make_requests(n: int, vocab: int, interval: float, quick: bool, seed: int = 0) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(n):
        p_len = int(torch.randint(16, 65, (1,), generator=g))
        new = int(torch.randint(32, 129, (1,), generator=g)) // (8 if quick else 1)
        reqs.append(Request(torch.randint(0, vocab, (p_len,), generator=g).tolist(), new, i * interval))
    return reqs


def wait_until(t0: float, when: float) -> None:
    delay = when - (time.perf_counter() - t0)
    if delay > 0:
        time.sleep(delay)


def run_continuous(model, reqs: list[Request], max_len: int) -> None:
    dec = Decoder(model, max_len=max_len)
    by_id: dict[int, Request] = {}
    pending = sorted(reqs, key=lambda r: r.arrival)
    t0 = time.perf_counter()
    while pending or dec.num_active:
        if not dec.num_active:
            wait_until(t0, pending[0].arrival)
        now = time.perf_counter() - t0
        while pending and pending[0].arrival <= now:  # every arrived request joins the running batch
            r = pending.pop(0)
            (rid,) = dec.add([r.prompt], max_new_tokens=r.max_new, stop_token_ids=[])
            by_id[rid] = r
        out = dec.step()
        now = time.perf_counter() - t0
        for rid, tok in out.as_dict().items():
            r = by_id[rid]
            if r.first_token is None:
                r.first_token = now
            r.tokens.append(tok)
        for rid in out.finished:
            by_id[rid].finish = now


def run_one_by_one(model, reqs: list[Request], max_len: int) -> None:
    t0 = time.perf_counter()
    for r in sorted(reqs, key=lambda r: r.arrival):
        wait_until(t0, r.arrival)
        dec = Decoder(model, max_len=max_len)
        dec.add([r.prompt], max_new_tokens=r.max_new, stop_token_ids=[])
        while dec.num_active:
            tok = dec.step().tokens.item()
            if r.first_token is None:
                r.first_token = time.perf_counter() - t0
            r.tokens.append(tok)
        r.finish = time.perf_counter() - t0


def summary(reqs: list[Request]) -> dict:
    lat = [r.finish - r.arrival for r in reqs]
    ttft = [r.first_token - r.arrival for r in reqs]
    span = max(r.finish for r in reqs) - min(r.arrival for r in reqs)
    return {"tokens": sum(len(r.tokens) for r in reqs), "tok_per_s": sum(len(r.tokens) for r in reqs) / span,
            "span_s": span, "latency_mean_s": statistics.mean(lat), "latency_p50_s": statistics.median(lat),
            "latency_max_s": max(lat), "ttft_mean_s": statistics.mean(ttft),
            "per_request": [{"arrival_s": r.arrival, "prompt": len(r.prompt), "new": r.max_new,
                             "ttft_s": t, "latency_s": x} for r, t, x in zip(reqs, ttft, lat)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="llama")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--interval-ms", type=float, default=100.0, help="time between two arrivals")
    p.add_argument("--quick", action="store_true", help="1/8 of the new tokens (smoke run)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cfg = ModelConfig.llama_like(**MODELS[args.model])
    model = Transformer(cfg).init_weights(seed=0).to(dtype)
    interval = args.interval_ms / 1000
    make = lambda: make_requests(args.requests, cfg.vocab_size, interval, args.quick)  # noqa: E731
    max_len = max(len(r.prompt) + r.max_new for r in make())
    warm = make()[:2]
    run_one_by_one(model, [Request(r.prompt, 4, 0.0) for r in warm], max_len)  # warm-up
    cont, seq = make(), make()
    with torch.inference_mode():
        run_continuous(model, cont, max_len)
        run_one_by_one(model, seq, max_len)
    same = all(a.tokens == b.tokens for a, b in zip(cont, seq))
    res = {"model": args.model, "dtype": args.dtype, "threads": torch.get_num_threads(),
           "interval_ms": args.interval_ms, "platform": platform.processor() or platform.machine(),
           "tokens_identical": same, "continuous": summary(cont), "one_by_one": summary(seq)}
    c, s = res["continuous"], res["one_by_one"]
    print(f"{args.requests} requests, one every {args.interval_ms:g} ms, model {args.model} {args.dtype}, "
          f"{res['threads']} threads; tokens identical in both modes: {same}")
    print(f"{'':24}{'continuous':>12}{'one by one':>12}")
    for key, label in [("tok_per_s", "tokens/s"), ("span_s", "wall time (s)"), ("latency_mean_s", "latency mean (s)"),
                       ("latency_p50_s", "latency p50 (s)"), ("latency_max_s", "latency max (s)"),
                       ("ttft_mean_s", "time to 1st token (s)")]:
        print(f"{label:24}{c[key]:>12.3f}{s[key]:>12.3f}")
    print(f"\n{'req':>4}{'arrive':>8}{'prompt':>7}{'new':>5}{'latency cont':>14}{'latency 1x1':>13}")
    for i, (a, b) in enumerate(zip(c["per_request"], s["per_request"])):
        print(f"{i:>4}{a['arrival_s']:>8.2f}{a['prompt']:>7}{a['new']:>5}{a['latency_s']:>14.3f}{b['latency_s']:>13.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    if not same:
        raise SystemExit("tokens differ between continuous batching and one-by-one decoding")


if __name__ == "__main__":
    main()
