"""Where does a world model's key-value retrieval fail? Each miss sorted by whether the code's first BPE piece was right.

A 4-digit code is two or three BPE pieces (" 55" + "96"). Finding the queried line takes a key match; after the
first piece, the next one can also be copied by plain induction (what followed " 55" before?), which picks the
wrong line when another code in the list starts with the same piece. So a miss whose first piece is right is a
copy error; a miss whose first piece is wrong means the line was not found.

    PYTHONPATH=src python scripts/retrieval_errors.py --model world-llama-2m-1k-retrieval-2 --tokens 1024 --per-depth 8

Held-out task seeds (-1000 - i), as the quality evaluation uses. Prints one letter per task and depth
(r = right, p = first piece right, x = first piece wrong) and the totals.

``--cut-lines 75,50,25,10`` then asks whether a list's first or last line is missed because of its distance from
the question or its place in the list: the depth-0 and depth-1 tasks are re-asked with the list cut to its first
(depth 0) or last (depth 1) N lines, so the queried line keeps its place at the list's end while its distance
from the question shrinks. Accuracy rising as lines are cut means distance; not rising means place.

    PYTHONPATH=src python scripts/retrieval_errors.py --model world-llama-2m-1k-retrieval-2 --per-depth 12 \
        --depths 0,1 --cut-lines 75,50,25,10
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
    p.add_argument("--tokens", type=int, default=1024, help="approximate prompt length")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--per-depth", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cut-lines", default="", help="also re-ask the depth-0/1 tasks with the list cut to N lines")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = load_reference(args.model)
    world, tok = ref.world, ref.tokenizer
    n_words = words_for_tokens(world, tok, args.tokens)
    totals = {"r": 0, "p": 0, "x": 0}
    print(f"{args.model}, key-value lists of ~{args.tokens} tokens ({n_words} words)")
    for depth in [float(d) for d in args.depths.split(",")]:
        tasks = [world.long_context_task("kv_retrieval", n_words, depth, seed=-1000 - i) for i in range(args.per_depth)]
        conts = greedy_continuations(ref.model, tok, [t.prompt for t in tasks], max_new_tokens=6, batch_size=8)
        marks = ""
        for task, cont in zip(tasks, conts):
            first_right = tok.decode(tok.encode(cont)[:1]) == tok.decode(tok.encode(task.answer)[:1])
            marks += "r" if is_exact_match(cont, task.answer) else ("p" if first_right else "x")
        for m in marks:
            totals[m] += 1
        print(f"depth {depth:.2f}: {marks}  ({marks.count('r')}/{len(marks)} right)")
    print(f"right {totals['r']}, first piece right but code wrong {totals['p']}, first piece wrong {totals['x']}")
    if args.cut_lines:
        cut_lists(ref, n_words, [int(n) for n in args.cut_lines.split(",")], args.per_depth)
    return 0


def cut_lists(ref, n_words: int, keeps: list[int], per_depth: int) -> None:
    """Right answers on the first-line (depth 0) and last-line (depth 1) tasks with the list cut to N lines."""
    for depth in (0.0, 1.0):
        tasks = [ref.world.long_context_task("kv_retrieval", n_words, depth, seed=-1000 - i) for i in range(per_depth)]
        cells = []
        for keep in keeps:
            prompts = []
            for task in tasks:
                lines = [line if line.endswith(".") else line + "." for line in task.context.split(". ")]
                lines = lines[:keep] if depth == 0 else lines[-keep:]
                prompts.append(" ".join(lines) + "\n" + task.question)
            conts = greedy_continuations(ref.model, ref.tokenizer, prompts, max_new_tokens=6, batch_size=8)
            cells.append(f"{keep} lines {sum(is_exact_match(c, t.answer) for c, t in zip(conts, tasks))}/{len(tasks)}")
        print(f"{'first' if depth == 0 else 'last'} line, list cut to: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
