"""DCIS vs the LongRoPE-style evolutionary search: per-dimension RoPE factors for reading the reference model
(trained at 128 tokens) at ``--length`` tokens, without fine-tuning. Objective: perplexity of the first
``--search-windows`` windows of the world text; reported: that objective, perplexity on the other (held-out)
windows, and the number of evaluations, next to plain PI / YaRN with the same ratio.

Not a timing benchmark.    python benchmarks/rope_search.py --length 512 --budget 48
"""

from __future__ import annotations

import argparse

import torch

from lmlab.efficient.calibration import perplexity, token_stream, windows
from lmlab.efficient.rope_search import dcis_search, evolutionary_search, longrope_params
from lmlab.reference import load_reference


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--budget", type=int, default=48, help="objective evaluations allowed to each search")
    p.add_argument("--search-windows", type=int, default=6)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ref = load_reference()
    model, cfg = ref.model, ref.model.config
    original, n = cfg.max_seq_len, cfg.rot_dim // 2
    scale = args.length / original
    all_windows = windows(token_stream(ref.tokenizer, ref.world.training_documents()), args.length)
    search, held = all_windows[:args.search_windows], all_windows[args.search_windows:]

    def set_scaling(kind, params):
        model.config = cfg.replace(rope_scaling=kind, rope_scaling_params=tuple(sorted(params.items())))

    def objective(factors):
        set_scaling("longrope", longrope_params(factors, original, scale))
        return perplexity(model, search, batch_size=2)

    rows = []
    for name, kind, params in [
        ("none", "default", {}), ("PI (linear)", "linear", {"factor": scale}),
        ("YaRN", "yarn", {"factor": scale, "original_max_position_embeddings": original}),
    ]:
        set_scaling(kind, params)
        rows.append((name, perplexity(model, search, 2), perplexity(model, held, 2), "-"))
    for name, fn in (("DCIS", dcis_search), ("evolutionary (LongRoPE-style)", evolutionary_search)):
        res = fn(objective, n, scale, max_evaluations=args.budget)
        set_scaling("longrope", longrope_params(res.factors, original, scale))
        rows.append((name, res.value, perplexity(model, held, 2), str(res.evaluations)))
        first = next((e for e, b in res.history if b <= 1.01 * res.value), None)
        print(f"# {name}: factors {[round(x, 2) for x in res.factors]}; within 1% of its best after {first} "
              "evaluations", flush=True)
    model.config = cfg
    print(f"reference model (trained at {original}) read at {args.length} tokens (s = {scale:g}); "
          f"{len(search)} search windows, {len(held)} held-out windows")
    print("| scaling | search ppl | held-out ppl | evaluations |")
    print("|---|---|---|---|")
    for name, s, h, e in rows:
        print(f"| {name} | {s:.3f} | {h:.3f} | {e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
