"""Context extension without fine-tuning: the reference model (trained at 128 tokens) read at 128, 256 and 512
tokens under each RoPE scaling, scaled by s = length / 128 (perplexity of non-overlapping windows of the world
text; every token of a window is scored, so the long windows' numbers include their first 128 tokens).

Not a timing benchmark.    python benchmarks/rope_extension.py
"""

from __future__ import annotations

import torch

from lmlab.efficient.calibration import perplexity, token_stream, windows
from lmlab.reference import load_reference

LENGTHS = (128, 256, 512)


def scalings(s: float, original: int) -> dict[str, tuple[str, dict]]:
    return {
        "none": ("default", {}),
        "linear (PI)": ("linear", {"factor": s}),
        "dynamic NTK": ("dynamic", {"factor": s}),
        "YaRN": ("yarn", {"factor": s, "original_max_position_embeddings": original}),
        "Llama 3": ("llama3", {"factor": s, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": original}),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated scaling names to run (default: all)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ref = load_reference()
    base_cfg = ref.model.config
    original = base_cfg.max_seq_len
    stream = token_stream(ref.tokenizer, ref.world.training_documents())
    print(f"reference model trained at {original} tokens; world text {len(stream)} tokens")
    print("| scaling | " + " | ".join(f"ppl @ {n} (s = {n / original:g})" for n in LENGTHS) + " |")
    print("|---|" + "---|" * len(LENGTHS))
    for name in scalings(2.0, original):
        if args.only and name not in args.only.split(","):
            continue
        cells = []
        for n in LENGTHS:
            s = max(n / original, 1.0)
            kind, params = scalings(s, original)[name]
            if kind != "default" and s == 1.0 and kind in ("linear", "yarn", "llama3"):
                kind, params = "default", {}  # factor 1 is the identity
            ref.model.config = base_cfg.replace(rope_scaling=kind, rope_scaling_params=tuple(sorted(params.items())))
            cells.append(f"{perplexity(ref.model, windows(stream, n), batch_size=4):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    ref.model.config = base_cfg
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
