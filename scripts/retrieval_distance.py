"""Is a key-value list's first or last line missed because of its distance from the question or its place in the list?

The held-out 1,024-token key-value tasks whose queried line is the list's first (depth 0) or last (depth 1) are
re-asked with the list cut to its first (depth 0) or last (depth 1) ``--keep`` lines, so the queried line keeps its
place at the list's end while its distance from the question shrinks. If accuracy rises as lines are cut, distance
is the cause; if it does not, the place is.

    PYTHONPATH=src python scripts/retrieval_distance.py --model world-llama-2m-1k-retrieval-2 --per-depth 12
"""

from __future__ import annotations

import argparse

import torch

from lmlab.data.recall import greedy_continuations, is_exact_match
from lmlab.reference import load_reference
from lmlab.train.world_quality import words_for_tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-2m-1k-retrieval-2", help="a shipped world reference")
    p.add_argument("--tokens", type=int, default=1024, help="approximate prompt length before cutting")
    p.add_argument("--keep", default="0,75,50,25,10", help="lines kept (0: the whole list)")
    p.add_argument("--per-depth", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = load_reference(args.model)
    world, tok = ref.world, ref.tokenizer
    n_words = words_for_tokens(world, tok, args.tokens)
    print(f"{args.model}, key-value lists of ~{args.tokens} tokens ({n_words} words), {args.per_depth} tasks a cell")
    for depth in (0.0, 1.0):
        tasks = [world.long_context_task("kv_retrieval", n_words, depth, seed=-1000 - i) for i in range(args.per_depth)]
        cells = []
        for keep in (int(k) for k in args.keep.split(",")):
            prompts = []
            for task in tasks:
                lines = [line if line.endswith(".") else line + "." for line in task.context.split(". ")]
                if keep:
                    lines = lines[:keep] if depth == 0 else lines[-keep:]
                prompts.append(" ".join(lines) + "\n" + task.question)
            conts = greedy_continuations(ref.model, tok, prompts, max_new_tokens=6, batch_size=8)
            right = sum(is_exact_match(c, t.answer) for c, t in zip(conts, tasks))
            cells.append(f"{keep or 'all'} lines: {right}/{len(tasks)}")
        print(f"depth {depth:.0f} ({'first' if depth == 0 else 'last'} line): " + "; ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
