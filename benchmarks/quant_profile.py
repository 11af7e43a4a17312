"""Where a quantized decode step spends its time outside the weight kernels: torch.profiler over one generate call.

A GPT-2-124M- or Llama-124M-shaped random model (benchmarks/quant_decode.py's builders), quantized (int4 g128 by
default, head int8), a 16-token prompt and ``--new-tokens`` greedy tokens; prints the aten ops by self CPU time.
lmlab's GEMV kernel calls are not aten ops, so they do not appear: the table is the rest of the step (attention,
norms, cache bookkeeping, Python-issued small ops). Relative, not a timing: fine on a busy machine.

    python benchmarks/quant_profile.py --model gpt2 --bits 4 --activations int8 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quant_decode import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--bits", type=int, default=4, choices=[4, 8])
    p.add_argument("--activations", default="int8", choices=["int8", "fp32"], help="the GEMV kernel's mode")
    p.add_argument("--new-tokens", type=int, default=17)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=25, help="table rows")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lmlab
    from lmlab.efficient import quant
    from lmlab.efficient.quantization import quantize
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as d:
        build_model(args.model).save_pretrained(d)
        model = quantize(lmlab.load(d), bits=args.bits, group_size=128 if args.bits == 4 else None)
    quant.GEMV_ACTIVATIONS = args.activations
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    lmlab.generate(model, prompt, max_new_tokens=4, stop_token_ids=[])  # warm-up: plans, kernel build
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        lmlab.generate(model, prompt, max_new_tokens=args.new_tokens, stop_token_ids=[])
    print(f"# {args.model}, int{args.bits}, {args.activations} activations, {args.threads} thread(s), 16-token prompt "
          f"+ {args.new_tokens} tokens")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
