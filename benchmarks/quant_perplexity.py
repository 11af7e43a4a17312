"""Perplexity of weight-only int8 / int4 (RTN vs GPTQ) against fp32 on the shipped reference model and world text.

Not a timing benchmark: it measures quality, so it may run on a busy machine. The evaluation text is the
world's training documents cut into non-overlapping windows of the model's context (``--seq``, default the
model's); GPTQ calibrates on 128 random segments of that length of the same text (seed 0; the paper uses
128 x 2048 of C4). Rows name the output head: quantized (the default: int8; ``-h4`` rows: int4) or float
(``-nohead`` rows).

    python benchmarks/quant_perplexity.py --model world-llama-0.9m      # prints a Markdown table (docs/claims.md)
    python benchmarks/quant_perplexity.py --activation-dtype float32
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lmlab.efficient.calibration import perplexity, random_segments, token_stream, windows
from lmlab.efficient.quantization import parse_quant_case, quantize, simulate_int8_activations
from lmlab.errors import LmlabError
from lmlab.reference import NAME, load_reference

CASES = ("8-rtn-nohead,8-rtn,8-gptq-nohead,8-gptq,4-rtn-nohead,4-rtn-h4,4-rtn,4-gptq-nohead,4-gptq-h4,4-gptq,"
         "4-rtn-32-h4,4-gptq-32-h4")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--activation-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--act-order", action="store_true")
    p.add_argument("--model", default=NAME, help=f"shipped reference model (default {NAME})")
    p.add_argument("--seq", type=int, default=None, help="window / segment length (default: the model's context)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate on the first N windows only")
    p.add_argument("--cases", default=CASES, help="rows: BITS-METHOD[-GROUP][-h8|-h4|-nohead]")
    p.add_argument("--int8-activations", action="store_true",
                   help="also score each row with its quantized layers' inputs rounded as the int8-activation GEMV "
                        "mode does (Q8_0, LMLAB_GEMV_ACT=int8): two more columns")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cases = [parse_quant_case(c) for c in args.cases.split(",")]
    except LmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    ref = load_reference(args.model)
    stream = token_stream(ref.tokenizer, ref.world.training_documents())
    seq = args.seq or ref.model.config.max_seq_len
    evaluation = windows(stream, seq)[:args.max_windows]
    calibration = random_segments(stream, args.samples, seq, seed=0)
    base = perplexity(ref.model, evaluation)
    print(f"reference model {ref.record['name']}, {len(evaluation)} windows x {seq} tokens, "
          f"activations {args.activation_dtype}, act_order={args.act_order}")
    a8_head = " Q8_0 activations | change vs float activations |" if args.int8_activations else ""
    print("| weights | method | group | output head | perplexity | change vs fp32 | seconds |" + a8_head)
    print("|---|---|---|---|---|---|---|" + "---|---|" * args.int8_activations)
    print(f"| fp32 | - | - | fp32 | {base:.4f} | - | - |" + " - | - |" * args.int8_activations)
    for bits, method, group, extra in cases:
        model = load_reference(args.model).model
        t0 = time.perf_counter()
        quantize(model, bits=bits, method=method, group_size=group, calibration=calibration,
                 activation_dtype=args.activation_dtype, act_order=args.act_order, **extra)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model, evaluation)
        head = model.lm_head
        head = f"int{head.bits}" if getattr(head, "weight_only_quantized", False) else "fp32"
        a8 = ""
        if args.int8_activations:
            handles = simulate_int8_activations(model)
            ppl8 = perplexity(model, evaluation)
            for h in handles:
                h.remove()
            a8 = f" {ppl8:.4f} | {100 * (ppl8 / ppl - 1):+.3f}% |"
        print(f"| int{bits} | {method} | {group or 'channel'} | {head} | {ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | "
              f"{seconds:.1f} |{a8}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
