"""``lmlab generate --guide gedi|genarm|vas|proxy ...`` and ``--forbid``: the options and the processors they build.

Kept here, not in ``lmlab.cli.generate``, so the generate verb only gains two lines.
"""

from __future__ import annotations

import argparse

from lmlab.errors import LmlabError


def add_guide_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guided decoding (lmlab.control)")
    g.add_argument("--guide", choices=["gedi", "genarm", "vas", "proxy"], default=None,
                   help="gedi: --guide-model with --desired-code/--anti-code; proxy: --tuned and --untuned; "
                        "genarm: --arm (repeatable) [--arm-weight ...] [--beta]; "
                        "vas: --guide-model VALUE_FILE [--guide-scale BETA]")
    g.add_argument("--guide-model", default=None,
                   help="GeDi: class-conditional guide checkpoint (same tokenizer); VAS: value-model file "
                        "(lmlab steer MODEL --method vas builds it)")
    g.add_argument("--guide-scale", type=float, default=None,
                   help="VAS: beta, the weight of the centred values (default: the file's; 0 = the base's tokens)")
    g.add_argument("--desired-code", default=None, help="GeDi: desired control code text")
    g.add_argument("--anti-code", default=None, help="GeDi: anti control code text")
    g.add_argument("--omega", type=float, default=30.0, help="GeDi: posterior weight (paper: 30)")
    g.add_argument("--tuned", default=None, help="proxy-tuning: small tuned checkpoint")
    g.add_argument("--untuned", default=None, help="proxy-tuning: the same small model untuned")
    g.add_argument("--alpha", type=float, default=1.0, help="proxy-tuning coefficient (paper: 1)")
    g.add_argument("--arm", action="append", default=[], help="GenARM: autoregressive reward model (repeatable)")
    g.add_argument("--arm-weight", action="append", type=float, default=[], help="GenARM: weight per --arm")
    g.add_argument("--beta", type=float, default=1.0, help="GenARM: KL coefficient (logits += w / beta * ARM)")
    g.add_argument("--forbid", action="append", default=[], help="forbidden string, also across tokens (repeatable)")


def load_guide(path: str, tokenizer, flag: str):
    """The guide model at ``path``; when both it and the base have a tokenizer, they must be the same one
    (equal vocabulary sizes are not enough: the same ids must mean the same strings)."""
    import lmlab

    guide = lmlab.load(path).eval()
    if tokenizer is not None:
        try:
            theirs = lmlab.load_tokenizer(path)
        except LmlabError:
            theirs = None  # a checkpoint without a tokenizer: only the vocabulary size can be compared
        if theirs is not None and theirs.backend.get_vocab() != tokenizer.backend.get_vocab():
            raise LmlabError(f"{flag} {path}: its tokenizer differs from the base model's (a guide must share the "
                             "base model's tokenizer)")
    return guide


def build_processors(args: argparse.Namespace, model, tokenizer) -> list:
    from lmlab.control import ForbidStrings, GeDi, GeDiConfig, GenARM, ProxyTuning

    if args.guide_scale is not None and args.guide != "vas":
        raise LmlabError("--guide-scale is the VAS value weight: use it with --guide vas")
    procs: list = []
    if args.guide == "gedi":
        missing = [f for f, v in (("--guide-model", args.guide_model), ("--desired-code", args.desired_code),
                                  ("--anti-code", args.anti_code)) if v is None]
        if missing:
            raise LmlabError(f"--guide gedi needs {', '.join(missing)}")
        if tokenizer is None:
            raise LmlabError("--guide gedi needs a tokenizer to encode the control codes")
        codes = [tokenizer.encode(args.desired_code), tokenizer.encode(args.anti_code)]
        if not all(codes):
            raise LmlabError("--desired-code/--anti-code: a control code encodes to no tokens")
        guide = load_guide(args.guide_model, tokenizer, "--guide-model")
        procs.append(GeDi(guide, codes[0], codes[1], GeDiConfig(omega=args.omega), base=model))
    elif args.guide == "vas":
        from lmlab.control.vas_file import load_vas

        if args.guide_model is None:
            raise LmlabError("--guide vas needs --guide-model (a value-model file from `lmlab steer --method vas`)")
        procs.append(load_vas(args.guide_model, model, beta=args.guide_scale))  # errors name the file
    elif args.guide == "proxy":
        if args.tuned is None or args.untuned is None:
            raise LmlabError("--guide proxy needs --tuned and --untuned")
        procs.append(ProxyTuning(load_guide(args.tuned, tokenizer, "--tuned"),
                                 load_guide(args.untuned, tokenizer, "--untuned"), alpha=args.alpha, base=model))
    elif args.guide == "genarm":
        if not args.arm:
            raise LmlabError("--guide genarm needs at least one --arm")
        arms = [load_guide(a, tokenizer, "--arm") for a in args.arm]
        procs.append(GenARM(arms, weights=args.arm_weight or None, beta=args.beta, base=model))
    if args.forbid:
        if tokenizer is None:
            raise LmlabError("--forbid needs a tokenizer")
        procs.append(ForbidStrings(tokenizer, args.forbid, model.config.vocab_size))
    return procs
