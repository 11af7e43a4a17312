"""Decode throughput: lmlab.generate vs transformers' generate on identical random weights, in one process.

For each model shape (GPT-2 124M, a ~134M Llama), dtype (fp32, bf16) and batch size (1, 8): build a random
transformers model, save_pretrained it to a temporary directory, ``lmlab.load`` that directory (so both
sides run the very same weights), warm both up, then time full ``generate`` calls (64-token prompt, 128 new
tokens, greedy, no early stop) alternating lmlab and transformers rep by rep, so load from other processes
hits both sides alike. Reports the median, the tokens both produced (must be identical in fp32; agreement
is reported for bf16), and each side's fraction of the memory-bandwidth bound:

    bound tok/s = B * read_bandwidth / (bytes of weights read per step + B * KV bytes read per row per step)

where the weights read per step are every matrix and norm once (the lm_head included; the input
embedding table only when tied to the lm_head, since a lookup reads B rows) and the KV term uses the mean
cache length over the decode. tok/s counts new tokens (B * 128) over the whole generate call, prefill
included, on both sides.

    python benchmarks/decode.py                 # full run (~10 minutes on 2 cores)
    python benchmarks/decode.py --quick         # smoke run: fewer reps, shorter generation
    python benchmarks/decode.py --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bandwidth import measure_bandwidth  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def hf_config(name: str):
    import transformers as T

    if name == "gpt2":
        cfg = T.GPT2Config()  # the defaults are GPT-2 small: 12 layers, 768 wide, 12 heads, vocab 50257, tied head
        assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == (12, 768, 12, 50257)
        return cfg
    if name == "llama":
        # Llama-shaped, GPT-2-small sized: 12 layers, 768 wide, 12 heads (MHA), SwiGLU 2048, vocab 32000,
        # untied lm_head as in Llama. 134M parameters, of which 110M are read per decode step.
        return T.LlamaConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             num_key_value_heads=12, intermediate_size=2048, max_position_embeddings=2048,
                             tie_word_embeddings=False)
    raise KeyError(name)


def build_hf(name: str, seed: int = 0):
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(hf_config(name)).eval()
    # Both sides must run to the end: no eos on the transformers side (lmlab gets stop_token_ids=[]).
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def bytes_per_step(model, batch: int, prompt_len: int, new_tokens: int) -> dict[str, float]:
    """Bytes a decode step must read: weights once (no embedding table unless tied) + this batch's KV cache."""
    c = model.config
    seen, weights = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name in ("embed.weight", "pos_embed.weight") and not (c.tie_embeddings and name == "embed.weight"):
            continue  # an embedding lookup reads B rows, not the table
        weights += p.numel() * p.element_size()
    mean_len = prompt_len + new_tokens / 2
    kv_row = 2 * c.n_layers * c.kv_heads * c.head_dim * mean_len * model.dtype.itemsize
    return {"weights": weights, "kv": batch * kv_row, "total": weights + batch * kv_row}


class BackgroundLoad:
    """CPU used by *other* processes over an interval, as a fraction of the machine (Linux /proc/stat).

    The machine may be shared; with torch's 2 OpenMP threads on 2 cores, another busy process stalls
    every parallel region, so each row records how busy the rest of the machine was while it was timed.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start()

    @staticmethod
    def _busy_jiffies() -> int | None:
        try:
            fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait

    def start(self) -> None:
        t = os.times()
        self._t0, self._own0, self._busy0 = time.monotonic(), t.user + t.system, self._busy_jiffies()

    def fraction(self) -> float | None:
        t = os.times()
        busy = self._busy_jiffies()
        wall = time.monotonic() - self._t0
        if busy is None or self._busy0 is None or wall <= 0:
            return None
        others = (busy - self._busy0) / self.hz - (t.user + t.system - self._own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


def spare_share() -> float:
    """Share of the CPUs that other processes may use without competing with torch's threads."""
    cores = os.cpu_count() or 1
    return max(0, cores - torch.get_num_threads()) / cores


def wait_for_quiet(max_wait: float, window: float = 3.0) -> float | None:
    """Wait (up to ``max_wait`` s) for a ``window`` in which other processes leave torch's threads their cores
    (they use < spare_share() + 10% of the CPUs)."""
    threshold = spare_share() + 0.1
    deadline = time.monotonic() + max_wait
    while True:
        load = BackgroundLoad()
        time.sleep(window)
        frac = load.fraction()
        if frac is None or frac < threshold or time.monotonic() >= deadline:
            return frac




def measure(run_lmlab, run_hf, reps: int) -> dict:
    """Time ``reps`` calls of each side, alternating, so background load hits both sides alike."""
    load = BackgroundLoad()
    out = {"ours": [], "hf": []}
    for _ in range(reps):
        t, out["tok_ours"] = time_call(run_lmlab)
        out["ours"].append(t)
        t, out["tok_hf"] = time_call(run_hf)
        out["hf"].append(t)
    out["background"] = load.fraction()
    return out


def time_call(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_case(name: str, dtype_name: str, batches: list[int], args, bandwidth: float, workdir: Path) -> list[dict]:
    import lmlab

    dtype = DTYPES[dtype_name]
    hf = build_hf(name)
    path = workdir / name
    if not path.exists():
        hf.save_pretrained(path)
    hf = hf.to(dtype)
    ours = lmlab.load(path, dtype=dtype)
    if args.pack:  # opt-in: a oneDNN-blocked copy of every weight (memory x2), see lmlab.core.linear
        from lmlab.core.linear import pack_for_inference

        pack_for_inference(ours)
    n_params = sum(p.numel() for p in hf.parameters())
    rows = []
    for batch in batches:
        gen = torch.Generator().manual_seed(1234 + batch)
        prompt = torch.randint(0, hf.config.vocab_size, (batch, args.prompt_len), generator=gen)
        mask = torch.ones_like(prompt)

        def run_lmlab(n=args.new_tokens):
            return lmlab.generate(ours, prompt, max_new_tokens=n, stop_token_ids=[])[:, args.prompt_len:]

        def run_hf(n=args.new_tokens):
            out = hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return out[:, args.prompt_len:]

        for _ in range(args.warmup):
            run_lmlab(16)
            run_hf(16)
        best = None
        for attempt in range(1 + args.retries):  # with --wait-quiet, redo a case that other processes disturbed
            if args.wait_quiet:
                wait_for_quiet(args.wait_quiet)
            m = measure(run_lmlab, run_hf, args.reps)
            if best is None or (m["background"] or 0) < (best["background"] or 0):
                best = m
            if not args.wait_quiet or (m["background"] or 0) < spare_share() + 0.2:
                break
        t_ours, t_hf, tok_ours, tok_hf, background = (best[k] for k in ("ours", "hf", "tok_ours", "tok_hf", "background"))
        assert tok_ours.shape == tok_hf.shape == (batch, args.new_tokens), (tok_ours.shape, tok_hf.shape)
        agree = (tok_ours == tok_hf).float().mean().item()
        if dtype == torch.float32 and agree != 1.0:
            raise AssertionError(f"{name} fp32 batch {batch}: lmlab and transformers tokens differ "
                                 f"({agree:.1%} agree)")
        n_tok = batch * args.new_tokens
        ours_tps = n_tok / statistics.median(t_ours)
        hf_tps = n_tok / statistics.median(t_hf)
        b = bytes_per_step(ours, batch, args.prompt_len, args.new_tokens)
        bound = batch * bandwidth * 1e9 / b["total"]
        row = {
            "model": name, "params_m": round(n_params / 1e6, 1), "dtype": dtype_name, "batch": batch,
            "lmlab_tok_s": ours_tps, "hf_tok_s": hf_tps, "ratio": ours_tps / hf_tps,
            "bound_tok_s": bound, "lmlab_pct_bound": 100 * ours_tps / bound, "hf_pct_bound": 100 * hf_tps / bound,
            "token_agreement": agree, "background_cpu": background, "bytes_per_step": b,
            "lmlab_times_s": t_ours, "hf_times_s": t_hf,
        }
        print_row(row, flush=True)
        rows.append(row)
        gc.collect()
    hf = ours = None  # free both before the next model loads (the closures above are done with them)
    gc.collect()
    return rows


HEADER = (f"| {'model':<6} | {'dtype':<5} | {'batch':>5} | {'lmlab tok/s':>11} | {'HF tok/s':>8} | {'ratio':>5} | "
          f"{'bound tok/s':>11} | {'lmlab % bound':>13} | {'HF % bound':>10} | {'tokens agree':>12} | "
          f"{'other CPU':>9} |")


def print_row(r: dict, flush: bool = False) -> None:
    print(f"| {r['model']:<6} | {r['dtype']:<5} | {r['batch']:>5} | {r['lmlab_tok_s']:>11.1f} | {r['hf_tok_s']:>8.1f} | "
          f"{r['ratio']:>5.2f} | {r['bound_tok_s']:>11.1f} | {r['lmlab_pct_bound']:>12.0f}% | "
          f"{r['hf_pct_bound']:>9.0f}% | {r['token_agreement']:>11.1%} | {_pct(r['background_cpu']):>9} |", flush=flush)


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.0%}"


def machine_info() -> dict:
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags.split(), "amx_bf16": "amx_bf16" in flags.split(),
        "loadavg_start": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 rep, 32 new tokens, no warm-up beyond one call")
    p.add_argument("--models", default="gpt2,llama")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                   help="before each case, wait up to SECONDS until other processes leave torch's threads "
                        "their cores")
    p.add_argument("--retries", type=int, default=2,
                   help="with --wait-quiet: redo a case up to this many times if other processes competed with "
                        "torch's threads while it was timed (the least disturbed attempt is kept)")
    p.add_argument("--bandwidth", type=float, default=None, metavar="GBPS",
                   help="memory read bandwidth for the bound, as measured by benchmarks/bandwidth.py on a quiet "
                        "machine (default: measure it now)")
    p.add_argument("--pack", action="store_true",
                   help="lmlab side: lmlab.core.linear.pack_for_inference (prepacked weights, twice the memory)")
    p.add_argument("--linear", choices=["native", "onednn", "aten"], default="native",
                   help="lmlab's fp32 decode path: native (the default: lmlab.core.native's GEMV, attention and "
                        "RMSNorm for decode rows, oneDNN for prefill), onednn (native kernels off) or aten = "
                        "F.linear and PyTorch's ops throughout (lmlab.core.linear.FAST_INFERENCE = False)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.new_tokens = 1, 32
    if args.threads:
        torch.set_num_threads(args.threads)
    from lmlab.core import linear, native

    linear.FAST_INFERENCE = args.linear != "aten"
    native.ENABLED = args.linear == "native"
    import transformers

    transformers.utils.logging.disable_progress_bar()
    info = machine_info()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']}, transformers {info['transformers']}, "
          f"{info['threads']} threads, load average {info['loadavg_start']:.2f}, lmlab fp32 decode path: {args.linear}",
          flush=True)
    if args.bandwidth:
        bw = {"read_gbps": args.bandwidth, "given": True}
        print(f"# memory read bandwidth (given with --bandwidth): {args.bandwidth:.1f} GB/s", flush=True)
    else:
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        load = BackgroundLoad()
        bw = measure_bandwidth()
        bw["background_cpu"] = load.fraction()
        print(f"# memory read bandwidth (torch sum over 1 GiB fp32, best of 10, {bw['threads']} threads): "
              f"{bw['read_gbps']:.1f} GB/s (other processes used {_pct(bw['background_cpu'])} of the CPUs meanwhile)",
              flush=True)
    print(f"# prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy, median of {args.reps}; "
          f"'other CPU' = share of the CPUs used by other processes while a row was timed", flush=True)
    print(HEADER, flush=True)
    print("|" + "|".join("-" * (len(c)) for c in HEADER.split("|")[1:-1]) + "|", flush=True)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmlab-decode-bench-") as tmp:
        for name in args.models.split(","):
            for dtype_name in args.dtypes.split(","):
                rows += run_case(name, dtype_name, [int(b) for b in args.batches.split(",")], args,
                                 bw["read_gbps"], Path(tmp))
    info["loadavg_end"] = os.getloadavg()[0]
    print(f"# total {time.perf_counter() - t0:.0f} s; load average at the end {info['loadavg_end']:.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "bandwidth": bw, "args": vars(args) | {"out": str(args.out)},
                                        "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
