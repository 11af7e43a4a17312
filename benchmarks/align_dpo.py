"""DPO training step and best-of-N prefill sharing, lmlab vs the reference libraries, side by side in one run.

1. DPO step: the same random Llama-shaped checkpoint and the same batch of chosen/rejected pairs, one
   optimizer step (forward policy + reference, backward, AdamW) with lmlab's ``DPOObjective`` and with trl's
   ``DPOTrainer.compute_loss``; median step time and the peak RSS growth of a fresh process per side.
2. Best-of-16: 16 samples of one 256-token prompt with one shared prefill (``num_samples=16``) vs 16
   independent generations (each prefilling the prompt again).

    python benchmarks/align_dpo.py                # ~3 minutes on 2 quiet cores
    python benchmarks/align_dpo.py --quick        # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def build_checkpoint(path: str, hidden: int, layers: int, vocab: int) -> None:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128),
                        max_position_embeddings=1024, pad_token_id=0)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def make_batch(vocab: int, pairs: int, prompt: int, response: int) -> dict[str, torch.Tensor]:
    from lmlab.align.preference_data import TokenizedPair, collate_pairs

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(pairs):  # uneven response lengths, as real pairs have
        p = torch.randint(1, vocab, (prompt,), generator=g).tolist()
        c = torch.randint(1, vocab, (response - i,), generator=g).tolist()
        r = torch.randint(1, vocab, (response - 2 * i,), generator=g).tolist()
        out.append(TokenizedPair(p, c, r))
    return collate_pairs(out, 0)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dpo_side(side: str, path: str, args) -> dict:
    """Runs in its own process so that peak RSS belongs to one side only."""
    torch.set_num_threads(args.threads)
    batch = make_batch(args.vocab, args.pairs, args.prompt_len, args.response_len)
    if side == "lmlab":
        import lmlab
        from lmlab.align.dpo import DPOObjective

        policy, reference = lmlab.load(path), lmlab.load(path)
        obj = DPOObjective(beta=0.1, reference_model=reference)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        base = rss_mb()

        def step():
            loss, _ = obj(policy, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
        policy.train()
    else:
        import transformers as T
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        tok_dir = tempfile.mkdtemp()
        _tiny_tokenizer(args.vocab).save_pretrained(tok_dir)
        tok = T.PreTrainedTokenizerFast.from_pretrained(tok_dir)
        policy = T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
        reference = T.AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
        targs = DPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], beta=0.1, use_cpu=True, bf16=False, max_length=None,
                          per_device_train_batch_size=args.pairs)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=targs, processing_class=tok,
                             train_dataset=Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}]))
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        base = rss_mb()

        def step():
            loss = trainer.compute_loss(policy, {k: v.clone() for k, v in batch.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
        policy.train()
    first_loss = step()  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"side": side, "median_step_s": statistics.median(times), "first_loss": first_loss,
            "peak_rss_growth_mb": rss_mb() - base, "peak_rss_mb": rss_mb()}


def _tiny_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1"))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="t0", eos_token="t2", unk_token="t1")


def best_of_n(path: str, args) -> dict:
    import lmlab
    from lmlab.core.generate import GenerationConfig

    torch.set_num_threads(args.threads)
    model = lmlab.load(path).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, args.vocab, (args.bon_prompt,), generator=g).tolist()
    cfg = GenerationConfig(max_new_tokens=args.bon_new, temperature=1.0, seed=0, stop_token_ids=[])
    lmlab.generate(model, [prompt], GenerationConfig(max_new_tokens=2, stop_token_ids=[]))  # warm-up
    t = time.perf_counter()
    shared = lmlab.generate(model, [prompt], GenerationConfig(**{**cfg.__dict__, "num_samples": args.n}))
    t_shared = time.perf_counter() - t
    t = time.perf_counter()
    alone = [lmlab.generate(model, [prompt], GenerationConfig(**{**cfg.__dict__, "seed": s}))[0] for s in range(args.n)]
    t_alone = time.perf_counter() - t
    t = time.perf_counter()
    batched = lmlab.generate(model, [prompt] * args.n, cfg)
    t_batched = time.perf_counter() - t
    return {"n": args.n, "prompt_len": args.bon_prompt, "new_tokens": args.bon_new,
            "shared_prefill_s": t_shared, "independent_s": t_alone, "batched_no_sharing_s": t_batched,
            "speedup_vs_independent": t_alone / t_shared, "speedup_vs_batched": t_batched / t_shared,
            "same_samples_as_independent": shared == alone, "batched_same": batched == alone}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["lmlab", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--bon-prompt", type=int, default=256)
    ap.add_argument("--bon-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.steps, args.bon_new, args.vocab = 128, 2, 2, 8, 1000
    if args.side:
        print(json.dumps(dpo_side(args.side, args.path, args)))
        return
    with tempfile.TemporaryDirectory() as d:
        build_checkpoint(d, args.hidden, args.layers, args.vocab)
        sides = {}
        for side in ("lmlab", "trl"):
            cmd = [sys.executable, __file__, "--side", side, "--path", d] + [
                a for k, v in vars(args).items() if k not in ("side", "path", "out", "quick")
                for a in (f"--{k.replace('_', '-')}", str(v))]
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if res.returncode:
                raise SystemExit(f"{side} side failed:\n{res.stderr[-3000:]}")
            sides[side] = json.loads(res.stdout.strip().splitlines()[-1])
        report = {"machine": {"threads": args.threads, "load_avg": os.getloadavg(), "torch": torch.__version__},
                  "dpo": sides,
                  "dpo_step_ratio_trl_over_lmlab": sides["trl"]["median_step_s"] / sides["lmlab"]["median_step_s"],
                  "dpo_loss_agree": abs(sides["trl"]["first_loss"] - sides["lmlab"]["first_loss"]) < 1e-4,
                  "best_of_n": best_of_n(d, args)}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
