"""The GGUF branch of ``lmlab convert SRC OUT.gguf --gguf-type TYPE``: any model lmlab loads, as a llama.cpp file."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_gguf_export(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.io.gguf_format import gguf_path_or_none
    from lmlab.io.gguf_write import save_gguf

    model = lmlab.load(args.src, dtype="float32")
    has_tokenizer = gguf_path_or_none(args.src) is not None or (Path(args.src) / "tokenizer.json").exists()
    tokenizer = lmlab.load_tokenizer(args.src) if has_tokenizer else None
    out = save_gguf(model, args.dst, gguf_type=args.gguf_type, tokenizer=tokenizer)
    note = "" if tokenizer is not None else " (no tokenizer.json in SRC: written without a vocabulary)"
    print(f"wrote {out} ({model.config.model_type}, {args.gguf_type}, "
          f"{model.num_parameters() / 1e6:.2f}M parameters){note}")
    return 0
