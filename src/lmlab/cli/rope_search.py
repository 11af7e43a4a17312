"""``lmlab rope-search SRC OUT --length N``: search per-dimension RoPE factors (DCIS or evolutionary) that let
a model read N tokens, and write SRC's weights with the found ``longrope`` scaling (and max length N).

The objective is perplexity on ``--windows`` windows of N tokens of ``--text`` (a file / directory, or
``world`` for the synthetic world's documents); ``--budget`` caps the number of objective evaluations.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lmlab.errors import LmlabError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="source checkpoint directory (a rotary model)")
    p.add_argument("out", help="output directory")
    p.add_argument("--length", type=int, required=True, help="target context length in tokens")
    p.add_argument("--method", choices=["dcis", "evolutionary"], default="dcis")
    p.add_argument("--budget", type=int, default=48, help="objective evaluations allowed (default 48)")
    p.add_argument("--text", default="world", help="text for the objective: a file/directory, or 'world'")
    p.add_argument("--windows", type=int, default=4, help="windows of --length tokens in the objective")


def run(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.cli.quantize import _calibration_texts
    from lmlab.efficient.calibration import perplexity, token_stream, windows
    from lmlab.efficient.rope_search import dcis_search, evolutionary_search, longrope_params

    model = lmlab.load(args.src)
    cfg = model.config
    if cfg.pos_type != "rotary":
        raise LmlabError(f"{args.src}: rope-search needs a rotary model; this one has learned positions")
    if args.length <= cfg.max_seq_len:
        raise LmlabError(f"--length {args.length} must exceed the model's context {cfg.max_seq_len}")
    if args.budget < 1 or args.windows < 1:
        raise LmlabError("--budget and --windows must be positive")
    if not (Path(args.src) / "tokenizer.json").exists():
        raise LmlabError(f"{args.src}: no tokenizer.json, needed to tokenize --text")
    tok = lmlab.load_tokenizer(args.src)
    ids = windows(token_stream(tok, _calibration_texts(args.text)), args.length)[:args.windows]
    original, scale = cfg.max_seq_len, args.length / cfg.max_seq_len

    def scaled(factors):
        params = longrope_params(factors, original, scale)
        return cfg.replace(max_seq_len=args.length, rope_scaling="longrope",
                           rope_scaling_params=tuple(sorted(params.items())))

    def objective(factors):
        model.config = scaled(factors)
        return perplexity(model, ids, batch_size=2)

    search = dcis_search if args.method == "dcis" else evolutionary_search
    res = search(objective, cfg.rot_dim // 2, scale, max_evaluations=args.budget)
    model.config = scaled(res.factors)
    out = lmlab.save(model, args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.src) / name).exists() and Path(args.src).resolve() != Path(args.out).resolve():
            shutil.copyfile(Path(args.src) / name, out / name)
    print(f"wrote {out}: {args.method}, {res.evaluations} evaluations, perplexity at {args.length} tokens "
          f"{res.value:.3f}; long_factor {[round(f, 3) for f in res.factors]}")
    return 0
