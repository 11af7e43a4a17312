"""Long-context retrieval accuracy against KV budget (100 / 50 / 25 / 10% of the prompt) for every KV policy.

The world's retrieval tasks (``World.long_context_task``: ``kv_retrieval`` lines "The code of <key> is <code>."
and a ``needle`` in fact-sentence filler), held-out seeds (-1000 - i, as the reference model's quality
evaluation uses), at several depths; each prompt is prefilled whole (the H2O / Keyformer setting: the
budget is a fraction of the prompt, eviction after the prompt and after every generated token) unless
``--prefill-chunk`` streams it through a bounded cache. Exact match of the greedy continuation (6 tokens).
Not a timing benchmark.

The full cache is measured first: when it retrieves nothing, no policy can be ranked and the run stops there
(``--force`` runs the policies anyway). Each finished cell is written to ``--json`` at once, so a run cut
short keeps what it measured. Policies evict in blocks (their default slack, an eighth of the budget;
``--slack 0`` is the papers' per-step eviction).

    PYTHONPATH=src python scripts/kv_retrieval_budget.py --model world-llama-2m-1k --tokens 512 \\
        --png docs/kv_retrieval_budget.png --json docs/results/kv_retrieval_budget.json
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from types import SimpleNamespace
from pathlib import Path

import torch

import lmlab
from lmlab.data.recall import is_exact_match
from lmlab.efficient import kv_policy
from lmlab.errors import LmlabError
from lmlab.reference import RECORD_FILE, load_reference
from lmlab.reference_names import REFERENCES, WORLD_NAME
from lmlab.train.world_quality import words_for_tokens

POLICIES = ("window", "sinks", "h2o", "keyformer")
FRACTIONS = (1.0, 0.5, 0.25, 0.1)


@torch.inference_mode()
def accuracy(model, tokenizer, tasks, policy_name: str | None, fraction: float, chunk: int | None,
             slack: int | None = None) -> float:
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    hits = 0
    for task in tasks:  # one prompt at a time: a fractional budget is a fraction of *this* prompt
        ids = bos + tokenizer.encode(task.prompt)
        opts = {} if slack is None else {"slack": slack}
        policy = None if policy_name is None else kv_policy(policy_name, budget=fraction, **opts)
        row = lmlab.generate(model, [ids], max_new_tokens=6, stop_token_ids=stops, cache_policy=policy,
                             prefill_chunk_size=chunk)[0]
        hits += is_exact_match(tokenizer.decode(row[len(ids):]), task.answer)
    return hits / len(tasks)


def plot(table: dict, png: Path, title: str, policies=POLICIES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in policies:
        done = [f for f in FRACTIONS if str(f) in table[name]]
        ax.plot([100 * f for f in done], [100 * table[name][str(f)] for f in done], marker="o", label=name)
    ax.set_xlabel("KV budget (% of the prompt)")
    ax.set_ylabel("retrieval accuracy (%)")
    ax.set_title(textwrap.fill(title, 70), fontsize=8)  # the setup line is long: wrapped, not clipped
    ax.invert_xaxis()
    ax.set_ylim(-5, 105)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(png)


def is_reference(name: str) -> bool:
    return name in REFERENCES or (Path(name) / RECORD_FILE).is_file()


def other_model(name: str, world: str):
    """A checkpoint that is not a world reference (e.g. SmolLM2), asked the world reference ``world``'s tasks:
    the world's text is plain English, so any model that copies from its context can be scored on it."""
    model = lmlab.load(name, dtype="float32").eval()
    return SimpleNamespace(model=model, tokenizer=lmlab.load_tokenizer(name), world=load_reference(world).world)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=WORLD_NAME, help="a shipped reference name or a reference directory, or any "
                   "checkpoint lmlab.load reads (then the tasks come from --world's world)")
    p.add_argument("--world", default=WORLD_NAME, help="the reference whose world's tasks a non-reference --model "
                   "is asked (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=512, help="approximate prompt length in tokens")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--per-cell", type=int, default=4, help="tasks per kind and depth")
    p.add_argument("--kinds", default="kv_retrieval,needle")
    p.add_argument("--prefill-chunk", type=int, default=None)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--slack", type=int, default=None, help="block-eviction slack (default: the policy's)")
    p.add_argument("--force", action="store_true", help="run the policies even if the full cache scores 0")
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        ref = load_reference(args.model) if is_reference(args.model) else other_model(args.model, args.world)
        depths = [float(d) for d in args.depths.split(",")]
        n_words = words_for_tokens(ref.world, ref.tokenizer, args.tokens)
        tasks = [ref.world.long_context_task(kind, n_words, depth, seed=-1000 - i)
                 for kind in args.kinds.split(",") for depth in depths for i in range(args.per_cell)]
    except (LmlabError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    policies = args.policies.split(",")
    unknown = [n for n in policies if n not in POLICIES]
    if unknown:
        print(f"error: --policies: unknown {', '.join(unknown)} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    model, tok = ref.model, ref.tokenizer
    lengths = [len(tok.encode(t.prompt)) + 1 for t in tasks]
    head = (f"model {args.model}, {len(tasks)} tasks ({args.kinds}; depths {args.depths}; {args.per_cell} per "
            f"cell), prompts {min(lengths)}-{max(lengths)} tokens, prefill "
            f"{'chunks of %d' % args.prefill_chunk if args.prefill_chunk else 'whole'}, slack "
            f"{'policy default' if args.slack is None else args.slack}")

    def save(table: dict) -> None:
        if args.json:
            tmp = args.json.with_name(args.json.name + ".tmp")
            tmp.write_text(json.dumps({"setup": head, "accuracy": table}, indent=1))
            tmp.replace(args.json)

    full = accuracy(model, tok, tasks, None, 1.0, args.prefill_chunk)
    print(f"# full cache: {full:.3f}", file=sys.stderr, flush=True)
    table = {name: {"1.0": full} for name in policies}
    save(table)
    if full == 0 and not args.force:
        print(head)
        print(f"full cache: accuracy 0.000 on {len(tasks)} tasks: the model does not retrieve, so no KV policy can "
              "be ranked (stopped; --force runs them anyway)")
        return 0
    for name in policies:
        for frac in FRACTIONS[1:]:
            table[name][str(frac)] = accuracy(model, tok, tasks, name, frac, args.prefill_chunk, args.slack)
            print(f"# {name} {frac:.0%}: {table[name][str(frac)]:.3f}", file=sys.stderr, flush=True)
            save(table)
    print(head)
    print("| policy | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |")
    print("|---|" + "---|" * len(FRACTIONS))
    for name in policies:
        print(f"| {name} | " + " | ".join(f"{table[name][str(f)]:.3f}" for f in FRACTIONS) + " |")
    if args.png:
        plot(table, args.png, head, policies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
