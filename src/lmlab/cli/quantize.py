"""``lmlab quantize SRC OUT --bits 8|4 --method rtn|gptq``: weight-only quantization of a checkpoint.

GPTQ needs calibration text: ``--calibration PATH`` (a .txt / .jsonl / .parquet file or a directory, read by
``lmlab.data.corpus``) or ``--calibration world`` (the synthetic world's training documents). The output
directory holds config.json with a ``quantization_config`` and model.safetensors; ``lmlab.load`` (and so
``generate``, ``chat``, ``evaluate``) reads it back.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lmlab.errors import LmlabError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (float)")
    p.add_argument("out", help="output directory")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8, help="8: int8 per channel; 4: int4 groups")
    p.add_argument("--method", choices=["rtn", "gptq"], default="rtn", help="round to nearest, or GPTQ")
    p.add_argument("--group-size", type=int, default=None, help="int4 group size (default 128)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian diagonal")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of mean diag(H) (default 0.01)")
    p.add_argument("--calibration", default=None, help="GPTQ calibration text: a file/directory, or 'world'")
    p.add_argument("--samples", type=int, default=128, help="GPTQ calibration segments (default 128, the paper's)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per segment (default: the model's context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-head", dest="head", action="store_false",
                   help="leave the output head float (default: quantize it too; a tied table stays float for lookup)")
    p.add_argument("--head-bits", type=int, choices=[8, 4], default=None, help="bits of the output head (default 8)")
    p.add_argument("--activation-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                   help="activations for the packed CPU kernels (bfloat16 is the fast one)")


def _calibration_texts(source: str) -> list[str]:
    if source == "world":
        from lmlab.data.world import WorldConfig, build_world

        return build_world(WorldConfig.quickstart()).training_documents()
    from lmlab.data.corpus import read_documents

    return list(read_documents(source))


def run(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.efficient.calibration import random_segments, token_stream
    from lmlab.efficient.quantization import quantize

    model = lmlab.load(args.src)
    calibration = None
    if args.method == "gptq":
        if args.calibration is None:
            raise LmlabError("--calibration is required with --method gptq (a text file or directory, or 'world')")
        if not (Path(args.src) / "tokenizer.json").exists():
            raise LmlabError(f"{args.src}: no tokenizer.json, needed to tokenize the calibration text")
        tok = lmlab.load_tokenizer(args.src)
        seq_len = args.seq_len or model.config.max_seq_len
        calibration = random_segments(token_stream(tok, _calibration_texts(args.calibration)), args.samples, seq_len,
                                      args.seed)
    quantize(model, bits=args.bits, method=args.method, group_size=args.group_size, calibration=calibration,
             damp=args.damp, act_order=args.act_order, activation_dtype=args.activation_dtype, head=args.head,
             head_bits=args.head_bits)
    out = lmlab.save(model, args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.src) / name).exists() and Path(args.src).resolve() != Path(args.out).resolve():
            shutil.copyfile(Path(args.src) / name, out / name)
    q = model.quantization_config
    print(f"wrote {out} (int{q.bits} {q.method}, group {q.effective_group_size or 'per-channel'}, "
          f"{len(q.quantized)} linear layers quantized, output head {'included' if 'lm_head' in q.quantized else 'float'})")
    return 0
