"""``lmlab merge BASE ADAPTER OUT``: fold a LoRA adapter (peft or lmlab format) into a base checkpoint.

OUT is a plain Hugging Face checkpoint (config.json + model.safetensors [+ tokenizer]) that transformers
and lmlab load without any adapter library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base checkpoint directory (config.json + model.safetensors)")
    p.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("out", help="output directory for the merged checkpoint")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype of the merged weights (default: as stored in BASE); the merge itself runs in fp32")


def run(args: argparse.Namespace) -> int:
    import torch

    import lmlab
    from lmlab.io.output_paths import expect_directory_path
    from lmlab.peft import count_parameters, load_adapter, merge_and_unload

    base, out = Path(args.base), expect_directory_path(args.out, "OUT")
    if out.exists() and out.resolve() == base.resolve():
        raise LmlabError("OUT must differ from BASE (merging in place would overwrite the base weights)")
    model = lmlab.load(base, dtype="float32")
    stored_dtype = _stored_dtype(base)
    targets = load_adapter(model, args.adapter, name="merged")
    merge_and_unload(model)
    final = args.dtype or stored_dtype
    if final != "float32":
        model.to({"bfloat16": torch.bfloat16, "float16": torch.float16}[final])
    tokenizer = lmlab.load_tokenizer(base) if (base / "tokenizer.json").exists() else None
    lmlab.save(model, out, tokenizer=tokenizer)
    _, total = count_parameters(model)
    print(f"merged {len(targets)} adapted modules into {total:,} parameters ({final}) -> {out}", file=sys.stderr)
    return 0


def _stored_dtype(base: Path) -> str:
    from safetensors import safe_open

    f = base / "model.safetensors"
    if not f.exists():
        return "float32"
    with safe_open(str(f), framework="pt") as h:
        first = next(iter(h.keys()), None)
        dtype = str(h.get_slice(first).get_dtype()) if first is not None else "F32"
    return {"BF16": "bfloat16", "F16": "float16"}.get(dtype, "float32")
