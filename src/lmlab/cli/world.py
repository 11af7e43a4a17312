"""``lmlab world OUT``: write the synthetic world (JSONL splits + ground-truth tables) to a directory.

Besides the facts and probes: QA (train / held-out question forms), chat dialogues, control-coded attribute
text, long-context tasks, counterfactual edit requests and ``corpus.jsonl`` (every training text with its
content-hash split); see docs/world.md.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="directory to write")
    p.add_argument("--preset", choices=["tiny", "quickstart", "standard"], default="quickstart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bias-strength", type=float, default=None, help="planted occupation/gender bias in [0, 1]")
    p.add_argument("--n-edits", type=int, default=None, help="counterfactual edit requests in edits.jsonl")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    from lmlab.data.world import WorldConfig, build_world

    overrides = {"seed": args.seed}
    if args.bias_strength is not None:
        overrides["bias_strength"] = args.bias_strength
    if args.n_edits is not None:
        overrides["n_edit_requests"] = args.n_edits
    config = getattr(WorldConfig, args.preset)(**overrides)
    world = build_world(config)
    world.write(args.out, overwrite=args.overwrite)
    corpus = world.corpus()
    n_val = sum(d.split == "validation" for d in corpus)
    print(f"wrote {args.out}: {len(world.facts)} facts, {len(world.training_documents())} training documents, "
          f"{len(corpus)} corpus texts ({n_val} validation), {len(world.edit_requests())} edit requests")
    return 0
