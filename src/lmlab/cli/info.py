"""``lmlab info MODEL``: the config lmlab reads from a checkpoint, its parameter count and weight files.

Every weight file's header is opened (no tensor data is read), so a truncated or corrupt safetensors file is
reported here rather than at the first ``generate``."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory or a Hugging Face model id in the local cache")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from lmlab.core.model import Transformer
    from lmlab.io.checkpoint import check_weight_files, read_config
    from lmlab.io.gguf_format import gguf_path_or_none
    from lmlab.io.hub import resolve_model_path

    gguf_file = gguf_path_or_none(args.model)
    if gguf_file is not None:  # one GGUF file: its reader checks every tensor's extent when it opens it
        from lmlab.io.gguf_read import GGUFFile

        config = read_config(gguf_file)
        weights = {"files": [gguf_file.name], "tensors": len(GGUFFile(gguf_file).tensors)}
    else:
        local = resolve_model_path(args.model)
        config = read_config(local)
        weights = check_weight_files(local)
    with torch.device("meta"):
        model = Transformer(config)  # shapes only: no weights are read
    n_params = model.num_parameters()
    info = {"path": args.model, "parameters": n_params, "weight_files": weights["files"],
            "tensors": weights["tensors"], **config.to_dict()}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{args.model}: {config.model_type}, {n_params / 1e6:.2f}M parameters, {weights['tensors']} tensors in "
          f"{', '.join(weights['files'])}")
    for key, value in config.to_dict().items():
        print(f"  {key:22s} {value}")
    return 0
