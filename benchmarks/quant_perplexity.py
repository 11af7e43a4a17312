"""Perplexity of weight-only int8 / int4 (RTN vs GPTQ) against fp32 on the shipped reference model and world text.

Not a timing benchmark: it measures quality, so it may run on a busy machine. The evaluation text is the
world's training documents cut into non-overlapping windows of the model's context (128 tokens); GPTQ
calibrates on 128 random 128-token segments of the same text (seed 0; the paper uses 128 x 2048 of C4).

    python benchmarks/quant_perplexity.py              # prints a Markdown table (docs/claims.md)
    python benchmarks/quant_perplexity.py --activation-dtype float32
"""

from __future__ import annotations

import argparse
import time

import torch

from lmlab.efficient.calibration import perplexity, random_segments, token_stream, windows
from lmlab.efficient.quantization import quantize
from lmlab.reference import load_reference

CASES = [(8, "rtn", None), (8, "gptq", None), (4, "rtn", 128), (4, "gptq", 128), (4, "rtn", 32), (4, "gptq", 32)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activation-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--act-order", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ref = load_reference()
    stream = token_stream(ref.tokenizer, ref.world.training_documents())
    seq = ref.model.config.max_seq_len
    evaluation = windows(stream, seq)
    calibration = random_segments(stream, args.samples, seq, seed=0)
    base = perplexity(ref.model, evaluation)
    print(f"reference model {ref.record['name']}, {len(evaluation)} windows x {seq} tokens, "
          f"activations {args.activation_dtype}, act_order={args.act_order}")
    print("| weights | method | group | perplexity | change vs fp32 | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| fp32 | - | - | {base:.4f} | - | - |")
    for bits, method, group in CASES:
        model = load_reference().model
        t0 = time.perf_counter()
        quantize(model, bits=bits, method=method, group_size=group, calibration=calibration,
                 activation_dtype=args.activation_dtype, act_order=args.act_order)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, evaluation)
        print(f"| int{bits} | {method} | {group or 'channel'} | {ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | "
              f"{seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
