"""A bounded load test of ``lmlab serve`` on loopback: N concurrent clients x M requests each, against the
same N*M requests sent one at a time.

The server runs in its own process (``python -m lmlab.cli.main serve``, so client and server do not share a
GIL) on 127.0.0.1 at a free port, unless ``--url`` points at a running OpenAI-compatible server (e.g. another
implementation serving the same weights). Every request is a /v1/completions call with a fixed number of
new tokens (``ignore_eos``), sampled with its own seed, so both phases do exactly the same work.

Reported: errors, requests/s and generated tokens/s of each phase, the speed-up of concurrency over one at a
time, and p50/p95 latency of each phase.

    python benchmarks/serve_load.py                         # 32 clients x 10 requests (run on a quiet machine)
    python benchmarks/serve_load.py --model DIR --max-tokens 64 --out serve_load.json
    python benchmarks/serve_load.py --smoke --threads 1     # 2 clients x 2 requests x 4 tokens (seconds)

On a machine shared with other work pass ``--threads 1``: OpenMP threads spin-waiting for busy cores can
slow every step tenfold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["The capital of Velmora is", "Kamsa speaks", "Where is", "The language of", "Trodina Shoba was born in",
           "Tell me about", "The birthplace of", "Serella Thahik is a native of"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, batch: int, queue: int, max_tokens: int,
                 threads: int | None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src") + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "lmlab.cli.main", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--set", f"max_batch_size={batch}", "--set", f"max_queue={queue}",
           "--set", f"max_tokens_limit={max(max_tokens, 1)}"] + (["--threads", str(threads)] if threads else [])
    return subprocess.Popen(cmd, env=env)


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            r = httpx.get(url + "/v1/models", timeout=5)
            if r.status_code == 200:
                return r.json()["data"][0]["id"]
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"no server at {url} after {timeout:.0f} s")


def request_body(model: str, i: int, max_tokens: int) -> dict:
    return {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8,
            "seed": i, "ignore_eos": True}


async def one(http: httpx.AsyncClient, url: str, body: dict, out: list) -> None:
    t0 = time.perf_counter()
    try:
        r = await http.post(url + "/v1/completions", json=body)
        ok = r.status_code == 200
        tokens = r.json()["usage"]["completion_tokens"] if ok else 0
        err = None if ok else f"{r.status_code}: {r.text[:200]}"
    except httpx.HTTPError as e:
        tokens, err = 0, f"{type(e).__name__}: {e}"
    out.append({"latency": time.perf_counter() - t0, "tokens": tokens, "error": err})


async def run_phase(url: str, bodies: list[list[dict]], concurrent: bool) -> dict:
    """``bodies[c]`` are client c's requests, sent in order; clients run together or one after another."""
    results: list[dict] = []
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        async def client(reqs):
            for body in reqs:
                await one(http, url, body, results)

        t0 = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(client(reqs) for reqs in bodies))
        else:
            for reqs in bodies:
                await client(reqs)
        wall = time.perf_counter() - t0
    lat = sorted(r["latency"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    errors = [r["error"] for r in results if r["error"]]
    return {"requests": len(results), "errors": len(errors), "first_errors": errors[:3], "wall_s": wall,
            "requests_per_s": len(results) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
            "p50_s": statistics.median(lat), "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the shipped reference model)")
    p.add_argument("--url", default=None, help="use this running server instead of starting one")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="2 clients x 2 requests x 4 tokens")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.requests, args.max_tokens = 2, 2, 4
    proc = None
    url = args.url
    if url is None:
        from lmlab.reference import ASSET_DIR

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.model or str(ASSET_DIR), port, batch=args.clients, queue=2 * args.clients,
                            max_tokens=args.max_tokens, threads=args.threads)
    try:
        model = wait_healthy(url, proc)
        bodies = [[request_body(model, c * args.requests + r, args.max_tokens) for r in range(args.requests)]
                  for c in range(args.clients)]
        asyncio.run(run_phase(url, [bodies[0][:1]], concurrent=False))  # warm-up
        seq = asyncio.run(run_phase(url, bodies, concurrent=False))
        conc = asyncio.run(run_phase(url, bodies, concurrent=True))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    speedup = conc["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else float("nan")
    print(f"{args.clients} clients x {args.requests} requests x {args.max_tokens} tokens, model {model}, {url}")
    print(f"{'phase':<14}{'errors':>8}{'req/s':>10}{'tok/s':>10}{'p50 s':>9}{'p95 s':>9}{'wall s':>9}")
    for name, r in (("one at a time", seq), ("concurrent", conc)):
        print(f"{name:<14}{r['errors']:>8}{r['requests_per_s']:>10.2f}{r['tokens_per_s']:>10.1f}{r['p50_s']:>9.3f}"
              f"{r['p95_s']:>9.3f}{r['wall_s']:>9.1f}")
    print(f"throughput, concurrent / one at a time: {speedup:.2f}x")
    for r in (seq, conc):
        for e in r["first_errors"]:
            print(f"error: {e}")
    if args.out:
        record = {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens, "model": model,
                  "sequential": seq, "concurrent": conc, "speedup": speedup,
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(args.out)
    return 1 if seq["errors"] or conc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
