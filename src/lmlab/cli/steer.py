"""``lmlab steer MODEL --positive TEXT --negative TEXT --layer L --out FILE``: build and save a steering vector.

Methods: ``actadd`` (Turner et al. 2023: the padded prompt-pair difference at ``blocks.L.resid_pre``) and
``concept`` (PCA over paired differences; ``--positive``/``--negative`` name text files, one example a line).
Use the file with ``lmlab generate MODEL --steer FILE --coeff C``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmlab.cli.common import add_model_argument, load_model_and_tokenizer
from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--method", choices=["actadd", "concept"], default="actadd")
    p.add_argument("--positive", required=True, help="actadd: prompt text; concept: text file, one example a line")
    p.add_argument("--negative", required=True, help="actadd: prompt text; concept: text file, one example a line")
    p.add_argument("--layer", type=int, required=True, help="block whose resid_pre is read (and later steered)")
    p.add_argument("--out", required=True, help="output .safetensors file")


def _lines(path: str, flag: str) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise LmlabError(f"{flag} {path}: cannot read ({e.strerror})") from None
    if not lines:
        raise LmlabError(f"{flag} {path}: no non-empty lines")
    return lines


def run(args: argparse.Namespace) -> int:
    from lmlab.steer import actadd, concept_direction

    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype)
    model.eval()
    if args.method == "actadd":
        vec = actadd(model, tokenizer, args.positive, args.negative, args.layer)
    else:
        direction = concept_direction(model, tokenizer, _lines(args.positive, "--positive"),
                                      _lines(args.negative, "--negative"), args.layer)
        vec = direction.steering_vector()
    path = vec.save(args.out)
    print(json.dumps({"out": str(path), "hook": vec.hook, "shape": list(vec.vector.shape),
                      "norm": round(float(vec.vector.norm()), 4), "fingerprint": vec.fingerprint}))
    return 0
