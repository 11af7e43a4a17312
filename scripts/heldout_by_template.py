"""Held-out paraphrase recall of a world model, template by template.

Why: the record's one figure averages 18 templates whose recall is bimodal (a construction the model has learnt is
found at 70-100%, one it has not at 0-10%), so comparing two models needs the per-template view
(docs/claims.md, issue 11, session 16).

    PYTHONPATH=src python scripts/heldout_by_template.py world-llama-2m-1k-retrieval-4 world-llama-2m-1k-retrieval-5
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from lmlab.data.recall import greedy_continuations, is_exact_match
from lmlab.reference import load_reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="shipped world references or model directories built by lmlab.reference")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, list[str]] = defaultdict(list)
    totals = []
    for name in args.models:
        ref = load_reference(name)
        probes = ref.world.probes("heldout")
        texts = greedy_continuations(ref.model, ref.tokenizer, [q.prompt for q in probes], 8)
        hits: dict[str, list[bool]] = defaultdict(list)
        for text, probe in zip(texts, probes):
            hits[probe.template_id].append(is_exact_match(text, probe.answer))
        for template_id, h in hits.items():
            rows[template_id].append(f"{100 * sum(h) / len(h):.0f}% of {len(h)}")
        totals.append(f"{100 * sum(map(sum, hits.values())) / len(probes):.1f}%")
    templates = {f"{r.name}/heldout/{i}": t for r in ref.world.relations.values() for i, t in enumerate(r.heldout_templates)}
    print("| template | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    for template_id, cells in rows.items():
        print(f"| {templates[template_id]} | " + " | ".join(cells) + " |")
    print("| **all** | " + " | ".join(totals) + " |")


if __name__ == "__main__":
    main()
