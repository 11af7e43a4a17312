"""Training throughput: lmlab's Trainer vs the same model as a ``transformers`` LlamaForCausalLM, and MFU.

For each model size, one lmlab model is built the way ``lmlab train`` builds it (``lmlab.train.run.build_model``,
GPT-2 init, seeded), saved with ``lmlab.save`` and loaded back with ``transformers.AutoModelForCausalLM.
from_pretrained(attn_implementation="sdpa")``, so all three contenders start from identical weights:

- **lmlab Trainer**: ``lmlab.train.loop.Trainer.train_step()`` (what ``Trainer.fit`` times for its
  ``tokens_per_s``: data from ``RandomTokens``, lr schedule, forward, loss, backward, all-reduce bookkeeping,
  non-finite checks, grad clipping, AdamW step);
- **lmlab plain**: the raw lmlab ``Transformer`` in the plain loop below (shows the Trainer's own overhead);
- **HF plain**: the transformers model in the same plain loop.

The plain loop: ``zero_grad(set_to_none=True)``; ``logits = model(x)``; fp32 cross-entropy of the logits
against the (already shifted) targets, exactly the lmlab causal-LM objective; ``backward``;
``clip_grad_norm_(1.0)``; ``AdamW.step``. All three use the same AdamW (lr 3e-4 constant, betas (0.9, 0.95),
eps 1e-8, weight decay 0.1 on >=2-D tensors only: ``lmlab.train.optim.param_groups``), fp32, grad clip 1.0,
the same batches in the same order (``RandomTokens``, uniform random tokens) and the same number of steps.
Checks (the run exits 1 if one fails): equal trainable-parameter counts, initial logits agree, the
first-step losses of lmlab and HF agree within 1e-4, and the Trainer and the lmlab plain loop produce the same
loss at every step (so the plain loop really is the Trainer's computation).

Timing: after ``--warmup`` steps each, the three loops run ``--rounds`` rounds of the same number of steps,
interleaved (the order rotates every round), so background load hits all of them alike. tokens/s =
tokens per step / median step time. Batches for the plain loops are generated before timing; the Trainer
draws its own (as it does in a real run; it costs ~0.1 ms a step).

MFU (model FLOPs utilisation, PaLM appendix B convention): model FLOPs per token =
6 * N_matmul + 12 * L * (n_heads * d_head) * T, where N_matmul counts the weights of every matmul -- the
q/k/v/o and gate/up/down projections of each layer plus the output head (d_model * vocab, counted even when
tied to the embedding, because the head is a real matmul; the embedding lookup and the norm gains are not
counted) -- and the attention term counts QK^T and AV over the full T x T square (PaLM counts causal attention
in full; a causal kernel that skips the masked half does less work than this). Achieved model FLOP/s =
FLOPs per token x tokens/s; MFU = that / the fp32 ``torch.mm`` peak measured on this machine in the same
process with the same thread count (``benchmarks/matmul_peak.py``), at the start and again at the end of the
run; the higher of the two is the peak (a peak measured during a burst of background load is too low, and
an MFU above 100% flags exactly that).

    python benchmarks/train_throughput.py                        # quickstart model + d512 model
    python benchmarks/train_throughput.py --configs all --profile --out results.json
    python benchmarks/train_throughput.py --quick                # smoke run (tiny sizes, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import measure_matmul_peak  # noqa: E402

# name -> sizes. "quickstart" is the model `lmlab quickstart` trains (RECIPE in lmlab/train/world_recipe.py,
# vocab = its BPE upper bound); d512 / d768 are sizes where CPU matmuls are large enough to be efficient.
CONFIGS = {
    "quickstart": dict(vocab=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=None, seq=128, batch=16),
    "d512": dict(vocab=8192, d_model=512, n_layers=8, n_heads=8, n_kv_heads=None, seq=256, batch=8),
    "d768": dict(vocab=8192, d_model=768, n_layers=6, n_heads=12, n_kv_heads=None, seq=256, batch=8),
}
QUICK_CONFIGS = {
    "tiny-gqa": dict(vocab=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, seq=32, batch=4),
    "quickstart": CONFIGS["quickstart"],
}
DEFAULT_CONFIGS = ["quickstart", "d512"]
LR, CLIP = 3e-4, 1.0
FIRST_LOSS_TOL = 1e-4  # lmlab vs HF, first step
SAME_LOOP_TOL = 1e-6  # lmlab Trainer vs lmlab plain loop, every step
LOOPS = ("lmlab_trainer", "lmlab_plain", "hf_plain")


# ------------------------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ FLOPs
def model_flops_per_token(model_cfg, seq: int) -> dict:
    """PaLM-style model FLOPs per trained token (forward + backward) for an lmlab ModelConfig; see module doc."""
    c = model_cfg
    d, L, hd = c.d_model, c.n_layers, c.head_dim
    attn_proj = d * c.n_heads * hd * 2 + d * c.kv_heads * hd * 2  # q, o + k, v
    mlp = (3 if c.mlp_type == "gated" else 2) * d * c.d_mlp
    n_layers_matmul = L * (attn_proj + mlp)
    n_head = d * c.vocab_size
    n_matmul = n_layers_matmul + n_head
    attention = 12 * L * c.n_heads * hd * seq
    return {"n_matmul_params": n_matmul, "n_layer_matmul_params": n_layers_matmul, "n_head_params": n_head,
            "dense_flops": 6 * n_matmul, "attention_flops": attention, "flops_per_token": 6 * n_matmul + attention}


# ------------------------------------------------------------------------------------------------ loops
class Batches:
    """The same ``RandomTokens`` stream the Trainer reads, materialised for the plain loops."""

    def __init__(self, vocab: int, seq: int, batch: int, seed: int) -> None:
        from lmlab.train.run import RandomTokens

        self.stream, self.batch, self.items = RandomTokens(vocab, seq, seed), batch, []

    def ensure(self, n: int) -> None:
        while len(self.items) < n:
            self.items.append(self.stream.next_batch(self.batch))

    def __getitem__(self, i: int):
        self.ensure(i + 1)
        return self.items[i]


class PlainLoop:
    """zero_grad -> forward -> fp32 CE -> backward -> clip -> AdamW, timing each phase (CPU ops are synchronous)."""

    def __init__(self, model, forward, batches: Batches, optim_cfg) -> None:
        from lmlab.train.optim import build_optimizer

        self.model, self.forward, self.batches = model.train(), forward, batches
        self.optimizer = build_optimizer(model, optim_cfg)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.i = 0
        self.phases: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "clip", "optimizer")}

    def step(self) -> float:
        inputs, targets = self.batches[self.i]
        self.i += 1
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.forward(self.model, inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        for k, v in zip(self.phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            self.phases[k].append(v)
        return loss.detach().item()


class TrainerLoop:
    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def step(self) -> float:
        return self.trainer.train_step()["loss"]


def lmlab_forward(model, inputs):
    return model(inputs)


def hf_forward(model, inputs):
    return model(input_ids=inputs, use_cache=False).logits


def train_config(spec: dict, out_dir: str):
    from lmlab.config_io import load_config
    from lmlab.train.config import TrainConfig

    ov = ["data.kind=random", f"model.vocab_size={spec['vocab']}", f"model.d_model={spec['d_model']}",
          f"model.n_layers={spec['n_layers']}", f"model.n_heads={spec['n_heads']}",
          f"model.max_seq_len={spec['seq']}", "model.tie_embeddings=true", f"data.block_size={spec['seq']}",
          f"data.batch_size={spec['batch']}", "data.grad_accum=1", "data.seed=0", f"optim.lr={LR}",
          "optim.schedule=constant", "optim.warmup_steps=0", "optim.weight_decay=0.1", f"optim.grad_clip={CLIP}",
          f"run.out_dir={out_dir}", "run.max_steps=1000000", "run.eval_every=0", "run.ckpt_every=0",
          "run.log_every=0", "run.progress=false", "run.device=cpu", "run.precision=fp32", "run.seed=0"]
    if spec.get("n_kv_heads"):
        ov.append(f"model.n_kv_heads={spec['n_kv_heads']}")
    return load_config(TrainConfig, None, ov)


def build_contenders(spec: dict, tmp: Path) -> tuple[dict, dict, object]:
    """The three loops on identical weights, plus facts/checks about them."""
    import transformers

    import lmlab
    from lmlab.train.loop import Trainer

    transformers.utils.logging.disable_progress_bar()
    from lmlab.train.run import RandomTokens, build_model

    cfg = train_config(spec, str(tmp / "trainer"))
    torch.manual_seed(cfg.run.seed)
    m_trainer = build_model(cfg, spec["vocab"])
    m_plain = build_model(cfg, spec["vocab"])
    sd_a, sd_b = m_trainer.state_dict(), m_plain.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a), "build_model not deterministic"
    lmlab.save(m_trainer, tmp / "hf")
    m_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32,
                                                             attn_implementation="sdpa").train()
    batches = Batches(spec["vocab"], spec["seq"], spec["batch"], cfg.data.seed)
    facts: dict = {"hf_class": type(m_hf).__name__}
    n_lm = sum(p.numel() for p in m_trainer.parameters() if p.requires_grad)
    n_hf = sum(p.numel() for p in m_hf.parameters() if p.requires_grad)
    facts["params"], facts["params_hf"] = n_lm, n_hf
    with torch.no_grad():
        x = batches[0][0]
        diff = (lmlab_forward(m_trainer, x) - hf_forward(m_hf, x)).abs().max().item()
    facts["initial_logits_max_abs_diff"] = diff
    trainer = Trainer(m_trainer, cfg, RandomTokens(spec["vocab"], spec["seq"], cfg.data.seed), progress=False)
    loops = {"lmlab_trainer": TrainerLoop(trainer),
             "lmlab_plain": PlainLoop(m_plain, lmlab_forward, batches, cfg.optim),
             "hf_plain": PlainLoop(m_hf, hf_forward, batches, cfg.optim)}
    return loops, facts, cfg


def profile_loop(loop, steps: int, rows: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loop.step()
    avgs = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in avgs) or 1.0
    top = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in avgs[:rows]]
    # a partition of the step: GEMMs, SDPA kernels (fwd + bwd), the whole AdamW step (its elementwise
    # children included), everything else (norms, RoPE, SwiGLU, softmax/CE, copies, clipping, autograd glue)
    self_of = lambda pred: sum(e.self_cpu_time_total for e in avgs if pred(e.key))  # noqa: E731
    matmul = self_of(lambda k: k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    attention = self_of(lambda k: "scaled_dot_product" in k)
    optimizer = sum(e.cpu_time_total for e in avgs if e.key.startswith("Optimizer.step"))
    cats = {"matmul": matmul, "attention": attention, "optimizer": optimizer,
            "other": max(0.0, total - matmul - attention - optimizer)}
    return {"steps": steps, "total_self_ms_per_step": total / 1e3 / steps, "top": top,
            "categories_ms_per_step": {k: v / 1e3 / steps for k, v in cats.items()},
            "categories_share": {k: v / total for k, v in cats.items()}}


def run_config(name: str, spec: dict, args) -> dict:
    tok_per_step = spec["batch"] * spec["seq"]
    with tempfile.TemporaryDirectory(prefix="lmlab-bench-") as tmp:
        loops, facts, cfg = build_contenders(spec, Path(tmp))
        flops = model_flops_per_token(loops["lmlab_plain"].model.config, spec["seq"])
        losses: dict[str, list[float]] = {k: [] for k in LOOPS}
        times: dict[str, list[float]] = {k: [] for k in LOOPS}
        # warm-up (allocator, oneDNN/BLAS kernel selection); the first step's loss is the fairness check
        warm_times = {}
        for k in LOOPS:
            for _ in range(args.warmup):
                t0 = time.perf_counter()
                losses[k].append(loops[k].step())
                warm_times[k] = time.perf_counter() - t0
        for k in ("lmlab_plain", "hf_plain"):
            for v in loops[k].phases.values():
                v.clear()
        step_s = max(warm_times.values())
        steps = args.steps or max(args.min_steps, min(args.max_steps, int(args.round_seconds / max(step_s, 1e-4))))
        loops["lmlab_plain"].batches.ensure(args.warmup + args.rounds * steps + (args.profile_steps if args.profile else 0))
        print(f"  [{name}] {facts['params'] / 1e6:.2f}M params, {tok_per_step} tok/step, warm-up step "
              f"{step_s * 1e3:.0f} ms -> {args.rounds} rounds x {steps} steps per loop", flush=True)
        order = list(LOOPS)
        for r in range(args.rounds):
            for k in order[r % 3:] + order[:r % 3]:
                for _ in range(steps):
                    t0 = time.perf_counter()
                    losses[k].append(loops[k].step())
                    times[k].append(time.perf_counter() - t0)
        result: dict = {"config": name, **spec, "tokens_per_step": tok_per_step, "warmup": args.warmup,
                        "rounds": args.rounds, "steps_per_round": steps, **facts, **flops}
        for k in LOOPS:
            med = statistics.median(times[k])
            tps = tok_per_step / med
            result[k] = {"median_step_ms": med * 1e3, "min_step_ms": min(times[k]) * 1e3,
                         "tokens_per_s": tps, "tokens_per_s_mean": tok_per_step * len(times[k]) / sum(times[k]),
                         "tokens_per_s_best": tok_per_step / min(times[k]),
                         "model_gflops": flops["flops_per_token"] * tps / 1e9,
                         "first_loss": losses[k][0]}
            if k != "lmlab_trainer":
                ph = loops[k].phases
                result[k]["phases_median_ms"] = {p: statistics.median(v) * 1e3 for p, v in ph.items()}
        result["ratio_trainer_over_hf"] = result["lmlab_trainer"]["tokens_per_s"] / result["hf_plain"]["tokens_per_s"]
        result["ratio_plain_over_hf"] = result["lmlab_plain"]["tokens_per_s"] / result["hf_plain"]["tokens_per_s"]
        result["ratio_trainer_over_plain"] = (result["lmlab_trainer"]["tokens_per_s"]
                                              / result["lmlab_plain"]["tokens_per_s"])
        result["ratio_trainer_over_hf_best"] = (result["lmlab_trainer"]["tokens_per_s_best"]
                                                / result["hf_plain"]["tokens_per_s_best"])
        n = min(len(v) for v in losses.values())
        result["first_loss_diff_lmlab_hf"] = abs(losses["lmlab_trainer"][0] - losses["hf_plain"][0])
        result["max_loss_diff_trainer_plain"] = max(abs(a - b) for a, b in
                                                    zip(losses["lmlab_trainer"][:n], losses["lmlab_plain"][:n]))
        result["max_loss_diff_lmlab_hf"] = max(abs(a - b) for a, b in
                                               zip(losses["lmlab_trainer"][:n], losses["hf_plain"][:n]))
        result["last_losses"] = {k: losses[k][n - 1] for k in LOOPS}
        result["steps_compared"] = n
        checks = {
            "params_equal": facts["params"] == facts["params_hf"],
            "initial_logits_agree": facts["initial_logits_max_abs_diff"] <= FIRST_LOSS_TOL,
            "first_loss_lmlab_vs_hf": result["first_loss_diff_lmlab_hf"] <= FIRST_LOSS_TOL,
            "trainer_equals_plain_loop": result["max_loss_diff_trainer_plain"] <= SAME_LOOP_TOL,
        }
        result["checks"] = checks
        if args.profile:
            result["profile"] = {k: profile_loop(loops[k], args.profile_steps, args.profile_rows) for k in LOOPS}
        return result


# ------------------------------------------------------------------------------------------------ report
def format_table(results: list[dict], peak: float) -> str:
    head = (f"{'config':<11} {'params':>7} {'tok/step':>8} {'GFLOP/tok':>9} | {'lmlab Trainer':>13} "
            f"{'lmlab plain':>11} {'HF plain':>9} | {'Trainer/HF':>10} {'(best)':>6} {'Tr/plain':>8} | "
            f"{'MFU Tr':>6} {'MFU pl':>6} {'MFU HF':>6}")
    lines = [f"tokens/s (median step); MFU against the measured fp32 matmul peak {peak:.1f} GFLOP/s. (best) = the "
             f"ratio of the fastest steps; Tr/plain compares two loops that run the same ops, i.e. it shows the "
             f"Trainer's overhead plus the timing noise", head, "-" * len(head)]
    for r in results:
        t, p, h = r["lmlab_trainer"], r["lmlab_plain"], r["hf_plain"]
        lines.append(f"{r['config']:<11} {r['params'] / 1e6:6.2f}M {r['tokens_per_step']:>8} "
                     f"{r['flops_per_token'] / 1e9:9.3f} | {t['tokens_per_s']:13,.0f} {p['tokens_per_s']:11,.0f} "
                     f"{h['tokens_per_s']:9,.0f} | {r['ratio_trainer_over_hf']:10.3f} "
                     f"{r['ratio_trainer_over_hf_best']:6.3f} {r['ratio_trainer_over_plain']:8.3f} | {t['mfu']:6.1%} "
                     f"{p['mfu']:6.1%} {h['mfu']:6.1%}")
    return "\n".join(lines)


def format_details(r: dict) -> str:
    out = [f"[{r['config']}] d_model {r['d_model']}, {r['n_layers']} layers, {r['n_heads']} heads"
           f"{', ' + str(r['n_kv_heads']) + ' kv heads' if r['n_kv_heads'] else ''}, vocab {r['vocab']} (tied), "
           f"seq {r['seq']}, batch {r['batch']}; N_matmul {r['n_matmul_params'] / 1e6:.2f}M "
           f"(layers {r['n_layer_matmul_params'] / 1e6:.2f}M + head {r['n_head_params'] / 1e6:.2f}M), "
           f"attention {r['attention_flops'] / r['flops_per_token']:.1%} of model FLOPs",
           "  checks: " + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in r["checks"].items())
           + f"; first-step loss lmlab {r['lmlab_trainer']['first_loss']:.6f} vs HF {r['hf_plain']['first_loss']:.6f} "
           f"(|diff| {r['first_loss_diff_lmlab_hf']:.1e}); initial logits |diff| {r['initial_logits_max_abs_diff']:.1e}; "
           f"over {r['steps_compared']} steps: max |loss diff| Trainer-plain {r['max_loss_diff_trainer_plain']:.1e}, "
           f"lmlab-HF {r['max_loss_diff_lmlab_hf']:.1e}"]
    for k in LOOPS:
        x = r[k]
        line = (f"  {k:<14} median {x['median_step_ms']:8.1f} ms/step (best {x['min_step_ms']:.1f}) "
                f"{x['model_gflops']:6.1f} model GFLOP/s")
        if "phases_median_ms" in x:
            line += "  [" + ", ".join(f"{p} {v:.1f}" for p, v in x["phases_median_ms"].items()) + " ms]"
        out.append(line)
    if "profile" in r:
        for k, prof in r["profile"].items():
            out.append(f"  profile {k} ({prof['total_self_ms_per_step']:.1f} ms self CPU per step): "
                       + ", ".join(f"{c} {prof['categories_ms_per_step'][c]:.1f} ms ({v:.0%})"
                                   for c, v in prof["categories_share"].items()))
            for e in prof["top"]:
                out.append(f"    {e['op'][:48]:<48} {e['self_ms_per_step']:8.2f} ms {e['share']:6.1%} "
                           f"x{e['calls_per_step']:g}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=None,
                   help=f"comma-separated from {sorted(CONFIGS)} or 'all' (default: {','.join(DEFAULT_CONFIGS)})")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few steps, small matmul probe")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's = cores)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per loop before timing")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--steps", type=int, default=0, help="steps per loop per round (0: ~--round-seconds worth)")
    p.add_argument("--round-seconds", type=float, default=4.0)
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops of each loop (after timing)")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--profile-rows", type=int, default=12)
    p.add_argument("--out", default=None, help="write all results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step's losses are the fairness check)")
    if args.quick:
        table = QUICK_CONFIGS
        names = list(QUICK_CONFIGS)
        args.warmup, args.rounds = min(args.warmup, 1), min(args.rounds, 2)
        args.round_seconds, args.max_steps = min(args.round_seconds, 0.5), min(args.max_steps, 5)
        args.min_steps = min(args.min_steps, 2)
    else:
        table = CONFIGS
        names = DEFAULT_CONFIGS if args.configs is None else (list(CONFIGS) if args.configs == "all"
                                                               else args.configs.split(","))
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {sorted(table)}")
    info = machine_info()
    load0 = loadavg()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, transformers "
          f"{info['transformers']}, threads {info['threads']}; load average {load0}", flush=True)
    if load0 and load0[0] > 0.5 * (info["cores"] or 1):
        print(f"WARNING: the machine is busy (1-minute load {load0[0]} on {info['cores']} cores): timings and the "
              f"matmul peak will be noisy and low; re-run on a quiet machine for the figures", flush=True)
    sizes = (512, 1024) if args.quick else (1024, 2048, 4096)
    peak = measure_matmul_peak(sizes, reps=3 if args.quick else 7)
    print(f"fp32 matmul peak: {peak['peak_gflops']:.1f} GFLOP/s (n={peak['peak_size']}, best of reps; median "
          f"{peak['median_gflops_at_peak_size']:.1f})", flush=True)
    results = []
    for name in names:
        results.append(run_config(name, table[name], args))
        print(format_details(results[-1]), flush=True)
    # the peak again at the end: if it moved a lot, the machine's load changed during the run
    peak_end = measure_matmul_peak(sizes, reps=3 if args.quick else 7)
    load1 = loadavg()
    peak_used = max(peak["peak_gflops"], peak_end["peak_gflops"])
    for r in results:
        for k in LOOPS:
            r[k]["mfu"] = r[k]["model_gflops"] / peak_used
    print()
    print(format_table(results, peak_used))
    print(f"matmul peak: start {peak['peak_gflops']:.1f}, end {peak_end['peak_gflops']:.1f} GFLOP/s (MFU uses the "
          f"higher); load average start {load0}, end {load1}")
    if any(r[k]["mfu"] > 1.0 for r in results for k in LOOPS):
        print("WARNING: MFU above 100%: both matmul-peak measurements were disturbed by other load", flush=True)
    failed = [(r["config"], k) for r in results for k, ok in r["checks"].items() if not ok]
    if args.out:
        doc = {"command": " ".join([Path(sys.executable).name] + sys.argv), "machine": info, "loadavg_start": load0,
               "loadavg_end": load1, "matmul_peak": peak, "matmul_peak_end": peak_end,
               "matmul_peak_used_gflops": peak_used,
               "flops_convention": "6*N_matmul (layer projections + output head, tied or not; no embedding lookup, "
                                   "no norms) + 12*L*n_heads*d_head*T (PaLM appendix B, full T x T)",
               "results": results, "failed_checks": failed}
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    if failed:
        print(f"FAILED checks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
