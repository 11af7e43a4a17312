"""Decode throughput of weight-only int8 / int4 lmlab against fp32 lmlab, transformers and torchao, one process.

For a GPT-2-124M-shaped and a Llama-124M-shaped random model (the same weights on every side: a transformers
model is built, save_pretrained, and ``lmlab.load``ed), at batch 1 (and any ``--batches``): time full
greedy ``generate`` calls (64-token prompt, 128 new tokens) for

- lmlab fp32 and bf16 (the baselines),
- lmlab int8 (per channel, RTN) and int4 (group 128, RTN) with the output head quantized too (the default of
  ``lmlab.efficient.quantize``; GPT-2's tied table stays fp32 for the lookup, the head matmul reads codes),
  (the head int8 by default; ``-h4``: an int4 head), and blocks only (``-nohead``). Decode steps (M <= 4
  rows) run lmlab's own AVX2 GEMV kernel (``lmlab.efficient.gemv_kernel``), the prefill PyTorch's
  ``torch._weight_int8pack_mm`` / ``torch._weight_int4pack_mm_for_cpu`` with bf16 activations;
  ``-torchk`` rows use PyTorch's kernels at decode too (the session-5 path), for comparison
  (``python benchmarks/linear_kernels.py --quant`` compares the kernels layer by layer); ``-a8`` rows run
  lmlab's kernel with int8 activations (llama.cpp's Q8_0, ``LMLAB_GEMV_ACT=int8``) at decode,
- transformers fp32 on the same weights,
- transformers + torchao ``Int8WeightOnlyConfig`` / ``Int4WeightOnlyConfig`` where torchao is installed and
  runs on this CPU (reported as skipped otherwise),

alternating the sides rep by rep so background load hits them alike, and print end-to-end tokens/s (prefill
included) and decode tokens/s (llama-bench's "tg": the time of the n - 1 tokens after the first, i.e. a call's
time minus that of a prompt + 1-token call; int4's prefill runs PyTorch's packed kernel, which is slow at 64
rows, so the two differ most there) next to the
memory-bandwidth bound  B * read_bandwidth / bytes read per step  (every weight and buffer once, embedding
tables only when a float head reads them, plus the mean KV cache), and the share of greedy tokens that agree
with lmlab fp32. Before timing, the bound of each format is printed at the measured bandwidth and at
PERF_NOTES.md's 17.8 GB/s (``--bounds-only`` prints just that, no timing, fine on a busy machine).

Issue 18's targets at batch 1: int8 >= 2x fp32 lmlab, int4 >= 3x. Timing needs a quiet machine:

    python benchmarks/quant_decode.py --wait-quiet 60       # full run
    python benchmarks/quant_decode.py --models gpt2 --bandwidth 17.8 --split \
        --variants lmlab-fp32,lmlab-int8,lmlab-int4,lmlab-int8-a8,lmlab-int4-a8,lmlab-int8-torchk,lmlab-int4-torchk
    python benchmarks/quant_decode.py --models gpt2 --threads 1 --reps 1 --new-tokens 32 --split   # busy machine
    python benchmarks/quant_decode.py --quick               # smoke run on tiny models (numbers meaningless)
    python benchmarks/quant_decode.py --bounds-only --bandwidth 17.8   # bytes per token and bounds only
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bandwidth import measure_bandwidth  # noqa: E402
from decode import BackgroundLoad, build_hf, machine_info, time_call, wait_for_quiet  # noqa: E402

PERF_NOTES_GBPS = 17.8  # ../shared/PERF_NOTES.md: this machine's read bandwidth, quiet
TINY = {  # smoke-run shapes (--quick): the same code paths, seconds instead of minutes
    "tiny-gpt2": dict(kind="gpt2", n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=256),
    "tiny-llama": dict(kind="llama", vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=256, max_position_embeddings=256,
                       tie_word_embeddings=False),
}


def build_model(name: str):
    """benchmarks/decode.py's GPT-2 / Llama 124M shapes, or a tiny one of the same family for smoke runs."""
    if name not in TINY:
        return build_hf(name)
    import transformers as T

    torch.manual_seed(0)
    spec = dict(TINY[name])
    cfg = (T.GPT2Config if spec.pop("kind") == "gpt2" else T.LlamaConfig)(**spec)
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def read_bytes_per_step(model, batch: int, prompt_len: int, new_tokens: int) -> float:
    """Weights (parameters and buffers: int8/int4 codes, scales) read once per step, plus the batch's KV cache.
    Embedding tables are only looked up (one row a token) unless a float head is tied to them."""
    c = model.config
    head_reads_table = getattr(model.lm_head, "weight", None) is model.embed.weight
    seen, total = set(), 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        if name in ("embed.weight", "pos_embed.weight") and not (head_reads_table and name == "embed.weight"):
            continue
        total += t.numel() * t.element_size()
    kv_row = 2 * c.n_layers * c.kv_heads * c.head_dim * (prompt_len + new_tokens / 2) * 4
    return total + batch * kv_row


def lmlab_variants(path: Path, only: set[str]):
    import lmlab
    from lmlab.efficient.quantization import quantize

    if "lmlab-fp32" in only:
        yield "lmlab-fp32", lmlab.load(path)
    if "lmlab-bf16" in only:
        yield "lmlab-bf16", lmlab.load(path, dtype="bfloat16")
    # the head is a large share of a small model's bytes (GPT-2: 154 MB of ~500 in fp32, tied), so it is
    # quantized by default; -nohead rows keep it float for comparison
    for label, kwargs in (("lmlab-int8", dict(bits=8)), ("lmlab-int4", dict(bits=4, group_size=128)),
                          ("lmlab-int8-a8", dict(bits=8)), ("lmlab-int4-a8", dict(bits=4, group_size=128)),
                          ("lmlab-int8-torchk", dict(bits=8)), ("lmlab-int4-torchk", dict(bits=4, group_size=128)),
                          ("lmlab-int4-h4", dict(bits=4, group_size=128, head_bits=4)),
                          # the int4 setting whose perplexity docs/real-model.md measures (group 32), and
                          # int4 heads, with the default int8 activations
                          ("lmlab-int4-g32-a8", dict(bits=4, group_size=32)),
                          ("lmlab-int4-h4-a8", dict(bits=4, group_size=128, head_bits=4)),
                          ("lmlab-int4-g32-h4-a8", dict(bits=4, group_size=32, head_bits=4)),
                          ("lmlab-int8-nohead", dict(bits=8, head=False)),
                          ("lmlab-int4-nohead", dict(bits=4, group_size=128, head=False))):
        if label in only:
            yield label, quantize(lmlab.load(path), **kwargs)


def hf_variants(hf, only: set[str]):
    import copy

    if "hf-fp32" in only:
        yield "hf-fp32", hf
    for label, config_name in (("hf-torchao-int8", "Int8WeightOnlyConfig"), ("hf-torchao-int4", "Int4WeightOnlyConfig")):
        if label not in only:
            continue
        try:
            import torchao.quantization as tq

            model = copy.deepcopy(hf).to(torch.bfloat16)
            kwargs = {"group_size": 128} if "Int4" in config_name else {}
            tq.quantize_(model, getattr(tq, config_name)(**kwargs))
            yield label, model
        except Exception as err:  # noqa: BLE001 -- torchao missing or unsupported on this CPU: say so, go on
            print(f"| {label}: skipped ({type(err).__name__}: {str(err).splitlines()[0][:100]})", flush=True)


def set_decode_kernel(label: str) -> None:
    """-torchk: PyTorch's packed kernels at decode too; -a8: lmlab's kernel with int8 (Q8_0) activations;
    otherwise lmlab's kernel with fp32 activations."""
    from lmlab.efficient import quant

    quant.USE_GEMV = not label.endswith("-torchk")
    quant.GEMV_ACTIVATIONS = "int8" if label.endswith("-a8") else "fp32"  # -a8 ends every such label


def split_step_time(model, prompt, new_tokens: int) -> tuple[float, float]:
    """(ms per decode step in linear layers, ms per step elsewhere): norms, attention, sampling, Python.

    Wraps every linear module's forward with a timer (~1 us each), times a prefill-only call and a full call,
    and divides the difference by the number of decode steps: the per-token overhead that the bandwidth
    bound does not see."""
    import time

    import lmlab
    from lmlab.core.linear import Linear
    from lmlab.efficient.quant import QuantizedLinear

    spent = [0.0]
    originals = {cls: cls.forward for cls in (Linear, QuantizedLinear)}

    def timed(forward):
        def call(self, x):
            t = time.perf_counter()
            y = forward(self, x)
            spent[0] += time.perf_counter() - t
            return y
        return call

    for cls, forward in originals.items():
        cls.forward = timed(forward)
    try:
        totals = []
        for n in (1, new_tokens + 1):
            spent[0] = 0.0
            t = time.perf_counter()
            lmlab.generate(model, prompt, max_new_tokens=n, stop_token_ids=[])
            totals.append((time.perf_counter() - t, spent[0]))
    finally:
        for cls, forward in originals.items():
            cls.forward = forward
    (t1, l1), (tn, ln) = totals
    linear_ms = (ln - l1) / new_tokens * 1e3
    return linear_ms, (tn - t1) / new_tokens * 1e3 - linear_ms


def run_model(name: str, args, bandwidth: float, workdir: Path) -> list[dict]:
    import lmlab

    hf = build_model(name)
    path = workdir / name
    hf.save_pretrained(path)
    only = set(args.variants.split(","))
    runners = {}
    for label, model in list(lmlab_variants(path, only)) + list(hf_variants(hf, only)):
        runners[label] = model
    print(f"# {name}: bytes read per token at batch 1 and the bandwidth bound (measured {bandwidth:.1f} GB/s; "
          f"PERF_NOTES.md {PERF_NOTES_GBPS} GB/s)", flush=True)
    for label, model in runners.items():
        if label.startswith("lmlab"):
            nbytes = read_bytes_per_step(model, 1, args.prompt_len, args.new_tokens)
            print(f"#   {label:<18} {nbytes / 1e6:8.1f} MB  bound {bandwidth * 1e9 / nbytes:7.1f} tok/s  "
                  f"({PERF_NOTES_GBPS * 1e9 / nbytes:7.1f} at {PERF_NOTES_GBPS} GB/s)", flush=True)
    rows = []
    if args.bounds_only:
        runners.clear()
        return rows
    for batch in [int(b) for b in args.batches.split(",")]:
        prompt = torch.randint(0, hf.config.vocab_size, (batch, args.prompt_len),
                               generator=torch.Generator().manual_seed(1234 + batch))
        mask = torch.ones_like(prompt)

        def call(label, n=args.new_tokens):
            m = runners[label]
            set_decode_kernel(label)
            if label.startswith("lmlab"):
                return lmlab.generate(m, prompt, max_new_tokens=n, stop_token_ids=[])[:, args.prompt_len:]
            out = m.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return out[:, args.prompt_len:]

        for label in runners:
            for _ in range(args.warmup):
                call(label, 16)
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        load = BackgroundLoad()
        times = {label: [] for label in runners}
        first = {label: [] for label in runners}  # prompt + 1 token: the prefill's share of a call
        tokens = {}
        for _ in range(args.reps):
            for label in runners:
                t, tokens[label] = time_call(lambda: call(label))
                times[label].append(t)
                first[label].append(time_call(lambda: call(label, 1))[0])
        background = load.fraction()
        ref_tokens = tokens.get("lmlab-fp32")
        base_tps = base_tg = None
        for label in runners:
            tps = batch * args.new_tokens / statistics.median(times[label])
            # decode only (llama-bench's "tg"): the n - 1 tokens after the first, prefill excluded
            tg = batch * (args.new_tokens - 1) / max(statistics.median(times[label]) - statistics.median(first[label]), 1e-9)
            base_tps = tps if label == "lmlab-fp32" else base_tps
            base_tg = tg if label == "lmlab-fp32" else base_tg
            model = runners[label]
            bound = (batch * bandwidth * 1e9 / read_bytes_per_step(model, batch, args.prompt_len, args.new_tokens)
                     if label.startswith("lmlab") else None)
            agree = (tokens[label] == ref_tokens).float().mean().item() if ref_tokens is not None else None
            row = {"model": name, "variant": label, "batch": batch, "tok_s": tps,
                   "x_fp32_lmlab": tps / base_tps if base_tps else None, "decode_tok_s": tg,
                   "decode_x_fp32_lmlab": tg / base_tg if base_tg else None, "bound_tok_s": bound,
                   "pct_bound": 100 * tg / bound if bound else None, "agree_with_fp32": agree,
                   "background_cpu": background, "times_s": times[label], "first_token_times_s": first[label]}
            rows.append(row)
            print(f"| {name} | {label:<16} | {batch:>5} | {tps:>8.1f} | "
                  f"{row['x_fp32_lmlab'] or float('nan'):>5.2f}x | {tg:>8.1f} | "
                  f"{row['decode_x_fp32_lmlab'] or float('nan'):>5.2f}x | {bound or float('nan'):>9.1f} | "
                  f"{row['pct_bound'] or float('nan'):>6.0f}% | {agree if agree is not None else float('nan'):>6.1%} | "
                  f"{background if background is not None else float('nan'):>5.0%} |", flush=True)
        if args.split and batch == 1:
            print(f"# {name}: ms per decode step in linear layers vs the rest (norms, attention, sampling, Python)",
                  flush=True)
            for label in runners:
                if label.startswith("lmlab"):
                    set_decode_kernel(label)
                    lin, rest = split_step_time(runners[label], prompt, args.new_tokens)
                    print(f"#   {label:<18} linears {lin:6.2f} ms  rest {rest:6.2f} ms  "
                          f"(rest alone caps decode at {1e3 / max(rest, 1e-9):.0f} tok/s)", flush=True)
            set_decode_kernel("lmlab-fp32")
    runners.clear()  # free the models before the next shape (a del would leave call() a dangling name)
    del hf
    gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, 1 rep, 16 new tokens")
    p.add_argument("--models", default="gpt2,llama")
    p.add_argument("--variants", default="lmlab-fp32,lmlab-bf16,lmlab-int8,lmlab-int4,lmlab-int8-a8,lmlab-int4-a8,"
                                         "lmlab-int4-h4,"
                                         "lmlab-int8-nohead,lmlab-int4-nohead,lmlab-int8-torchk,lmlab-int4-torchk,"
                                         "hf-fp32,hf-torchao-int8,hf-torchao-int4")
    p.add_argument("--bounds-only", action="store_true", help="print bytes per token and bounds; no timing")
    p.add_argument("--batches", default="1")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS")
    p.add_argument("--bandwidth", type=float, default=None, metavar="GBPS",
                   help="read bandwidth from benchmarks/bandwidth.py on a quiet machine (default: measure now)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's = cores); 1 for "
                                                             "relative checks on a busy machine")
    p.add_argument("--split", action="store_true",
                   help="also print ms per decode step in linear layers vs the rest, per lmlab variant")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.new_tokens, args.warmup = 1, 16, 0
        if args.models == "gpt2,llama":
            args.models = "tiny-gpt2,tiny-llama"
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads", flush=True)
    bandwidth = args.bandwidth or (PERF_NOTES_GBPS if args.bounds_only else
                                   measure_bandwidth(size_mb=256 if args.quick else 1024)["read_gbps"])
    print(f"# read bandwidth {bandwidth:.1f} GB/s", flush=True)
    print("| model | variant | batch | end-to-end tok/s | vs lmlab fp32 | decode tok/s | vs lmlab fp32 | bound tok/s "
          "| decode % bound | tokens = fp32 | other CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmlab-quant-decode-") as tmp:
        for name in args.models.split(","):
            rows += run_model(name, args, bandwidth, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "bandwidth_gbps": bandwidth, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
