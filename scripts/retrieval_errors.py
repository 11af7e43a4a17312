"""Where does a world model's key-value retrieval fail? Each miss sorted by whether the code's first BPE piece was right.

A 4-digit code is two or three BPE pieces (" 55" + "96"). Finding the queried line takes a key match; after the
first piece, the next one can also be copied by plain induction (what followed " 55" before?), which picks the
wrong line when another code in the list starts with the same piece. So a miss whose first piece is right is a
copy error; a miss whose first piece is wrong means the line was not found.

    PYTHONPATH=src python scripts/retrieval_errors.py --model world-llama-2m-1k-retrieval-2 --tokens 1024 --per-depth 8

Held-out task seeds (-1000 - i), as the quality evaluation uses; ``--seed-base -5000`` asks fresh ones. Prints one
letter per task and depth (r = right, p = first piece right, x = first piece wrong) and the totals. ``--model``
is a shipped world reference or a model directory trained on the quickstart world (``--world-seed``), such as a
training run's ``model/``.

``--cut-lines 75,50,25,10`` then asks whether a list's first or last line is missed because of its distance from
the question or its place in the list: the depth-0 and depth-1 tasks are re-asked with the list cut to its first
(depth 0) or last (depth 1) N lines, so the queried line keeps its place at the list's end while its distance
from the question shrinks. Accuracy rising as lines are cut means distance; not rising means place.

    PYTHONPATH=src python scripts/retrieval_errors.py --model world-llama-2m-1k-retrieval-2 --per-depth 12 \
        --depths 0,1 --cut-lines 75,50,25,10

``--key-novelty`` separates a line's place from its key. A list longer than the world has names (82 in the
quickstart world, so ~530 words) takes invented keys ("Kesis"); until session 15 they ended the list, so depth and
key novelty went together (now they are spread over it: ``World.long_context_task``). For each
list, one line keyed by a world name and one keyed by an invented name are each re-asked with the line moved to
the list's start, middle and end (the other lines in their order).

    PYTHONPATH=src python scripts/retrieval_errors.py --per-depth 16 --depths 0.5 --seed-base -5000 --key-novelty
"""

from __future__ import annotations

import argparse
import random
import re
from types import SimpleNamespace

import torch

from lmlab.data.recall import greedy_continuations, is_exact_match
from lmlab.reference import REFERENCES, load_reference
from lmlab.train.world_quality import words_for_tokens


def load_model(model: str, world_seed: int):
    """A shipped reference, or ``model`` as a directory with the quickstart world of ``world_seed``."""
    if model in REFERENCES:
        return load_reference(model)
    import lmlab
    from lmlab.data.world import WorldConfig, build_world

    return SimpleNamespace(model=lmlab.load(model, dtype="float32").eval(), tokenizer=lmlab.load_tokenizer(model),
                           world=build_world(WorldConfig.quickstart(seed=world_seed)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="world-llama-2m-1k-retrieval-2",
                   help="a shipped world reference or a model directory")
    p.add_argument("--world-seed", type=int, default=0, help="the quickstart world a model directory was trained on")
    p.add_argument("--seed-base", type=int, default=-1000, help="task i has seed SEED_BASE - i")
    p.add_argument("--tokens", type=int, default=1024, help="approximate prompt length")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--per-depth", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cut-lines", default="", help="also re-ask the depth-0/1 tasks with the list cut to N lines")
    p.add_argument("--key-novelty", action="store_true",
                   help="also re-ask a world-name-keyed and an invented-keyed line moved to the start/middle/end")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = load_model(args.model, args.world_seed)
    world, tok = ref.world, ref.tokenizer
    n_words = words_for_tokens(world, tok, args.tokens)
    totals = {"r": 0, "p": 0, "x": 0}
    print(f"{args.model}, key-value lists of ~{args.tokens} tokens ({n_words} words)")
    for depth in [float(d) for d in args.depths.split(",")]:
        tasks = [world.long_context_task("kv_retrieval", n_words, depth, seed=args.seed_base - i)
                 for i in range(args.per_depth)]
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
        cut_lists(ref, n_words, [int(n) for n in args.cut_lines.split(",")], args.per_depth, args.seed_base)
    if args.key_novelty:
        key_novelty(ref, n_words, args.per_depth, args.seed_base)
    return 0


_LINE = re.compile(r"The code of (.+?) is (\d+)\.")


def key_novelty(ref, n_words: int, n_lists: int, seed_base: int = -1000) -> None:
    """Right answers for a world-name key and an invented key, the queried line moved to start / middle / end."""
    names = {entity.name for group in ref.world.entities.values() for entity in group}
    prompts: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i in range(n_lists):
        task = ref.world.long_context_task("kv_retrieval", n_words, 0.5, seed=seed_base - i)
        lines = [(m.group(1), m.group(2), m.group(0)) for m in _LINE.finditer(task.context)]
        rng = random.Random(i)
        for kind, novel in (("world-name key", False), ("invented key", True)):
            pool = [j for j, (key, _, _) in enumerate(lines) if (key not in names) == novel]
            if not pool:
                continue
            q = rng.choice(pool)
            key, code, line = lines[q]
            others = [text for j, (_, _, text) in enumerate(lines) if j != q]
            for place, at in (("start", 0), ("middle", len(others) // 2), ("end", len(others))):
                context = " ".join(others[:at] + [line] + others[at:])
                prompt = context + "\n" + f"What is the code of {key}? The code of {key} is"
                prompts.setdefault((kind, place), []).append((prompt, " " + code))
    for kind in ("world-name key", "invented key"):
        cells = []
        for place in ("start", "middle", "end"):
            asked = prompts.get((kind, place), [])
            conts = greedy_continuations(ref.model, ref.tokenizer, [p for p, _ in asked], max_new_tokens=6, batch_size=8)
            cells.append(f"{place} {sum(is_exact_match(c, a) for c, (_, a) in zip(conts, asked))}/{len(asked)}")
        print(f"{kind}, queried line moved to: " + "; ".join(cells), flush=True)


def cut_lists(ref, n_words: int, keeps: list[int], per_depth: int, seed_base: int = -1000) -> None:
    """Right answers on the first-line (depth 0) and last-line (depth 1) tasks with the list cut to N lines."""
    for depth in (0.0, 1.0):
        tasks = [ref.world.long_context_task("kv_retrieval", n_words, depth, seed=seed_base - i)
                 for i in range(per_depth)]
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
