"""``lmlab quickstart``: the main job. Generate the synthetic world, train a tokenizer and a small
Llama-style model on it, save an HF checkpoint, and report fact recall against the ground truth.

The recipe itself is ``lmlab.train.world_recipe``. Everything lands in ``--out`` (default
``runs/quickstart``): ``world/``, ``shards/``, ``train/`` (metrics, loss curve, checkpoints, resolved config)
and ``model/`` (HF checkpoint + tokenizer).
"""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart",
                   help="output directory; an existing one is replaced only if empty or written by quickstart")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if quickstart did not write it (never the working dir or its parents)")
    p.add_argument("--steps", type=int, default=500, help="training steps")
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size (upper bound)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: this model's matmuls are too small to gain from more)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training field")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from lmlab.data.recall import greedy_continuations
    from lmlab.errors import LmlabError
    from lmlab.io.output_paths import expect_directory_path
    from lmlab.train.world_recipe import train_world_model

    if args.steps < 1:
        raise LmlabError(f"--steps must be positive, got {args.steps}")
    out = expect_directory_path(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    say = lambda msg: print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)  # noqa: E731
    model, tokenizer, world, report = train_world_model(out, args.steps, args.seed, args.vocab_size, args.set,
                                                        progress=not args.no_progress, say=say,
                                                        force=args.force)
    print()
    print("Fact recall against the ground truth (greedy, exact match):")
    print(f"  training templates      {report['train_fact_recall']:6.1%}   ({len(world.probes('train'))} probes)")
    print(f"  held-out paraphrases    {report['heldout_paraphrase_recall']:6.1%}   ({len(world.probes('heldout'))} probes)")
    print(f"  two-hop questions       {report['two_hop_accuracy']:6.1%}   ({len(world.two_hop_probes())} probes)")
    print()
    samples = world.probes("train")[:2] + world.probes("heldout")[:2] + world.two_hop_probes()[:2]
    for probe, text in zip(samples, greedy_continuations(model, tokenizer, [p.prompt for p in samples])):
        print(f"  {probe.prompt!r} -> {text.strip()[:40]!r}  (truth: {probe.answer.strip()!r})")
    print()
    print("Next:")
    print(f"  lmlab generate {out / 'model'} --prompt {samples[0].prompt!r}")
    print(f"  lmlab chat {out / 'model'}")
    print(f"  lmlab info {out / 'model'}")
    print(f"  python -c \"import transformers; transformers.AutoModelForCausalLM.from_pretrained('{out / 'model'}')\"")
    print("  python -c \"import lmlab.reference as r; print(r.load_reference().record)\"   # the shipped model")
    say(f"done; report in {out / 'report.json'}")
    return 0
