"""``lmlab convert SRC DST``: read any supported HF checkpoint strictly and write it back as safetensors.

Useful to turn a legacy ``pytorch_model.bin`` (read with weights_only=True) into safetensors, to change the
dtype, or to normalise a GPT-2 base checkpoint to the ``GPT2LMHeadModel`` layout. SRC may also be a ``.gguf``
file; a DST ending in ``.gguf`` writes a llama.cpp file instead (``--gguf-type``, see ``lmlab.io.gguf_write``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="destination directory (must differ from SRC; earlier weight shards in it are "
                   "removed), or a new .gguf file")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--gguf-type", choices=["f32", "f16", "bf16", "q8_0", "q4_0"], default="f32",
                   help="tensor type of the 2-D weights when DST is a .gguf file (norms and biases stay f32)")


def run(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.errors import LmlabError
    from lmlab.io.gguf_format import gguf_path_or_none, is_gguf_path
    from lmlab.io.output_paths import expect_directory_path

    if is_gguf_path(args.dst):
        from lmlab.cli.gguf_export import run_gguf_export

        return run_gguf_export(args)

    dst = expect_directory_path(args.dst, "DST")
    if dst.exists() and Path(args.src).exists() and dst.resolve() == Path(args.src).resolve():
        raise LmlabError(f"DST {args.dst} is SRC: converting in place would overwrite the source weights; "
                         f"choose a new directory")
    model = lmlab.load(args.src, dtype=args.dtype)
    from_gguf = gguf_path_or_none(args.src) is not None  # its tokenizer lives inside the file: rebuild tokenizer.json
    out = lmlab.save(model, args.dst, tokenizer=lmlab.load_tokenizer(args.src) if from_gguf else None)
    for name in TOKENIZER_FILES:
        if (Path(args.src) / name).exists():
            shutil.copyfile(Path(args.src) / name, out / name)
    print(f"wrote {out} ({model.config.model_type}, {model.num_parameters() / 1e6:.2f}M parameters, {model.dtype})")
    return 0
