"""``lmlab steer MODEL --method actadd|concept|icv|vas ... --out FILE``: build a steering file and save it.

- ``actadd`` (Turner et al. 2023): ``--positive``/``--negative`` prompts, the padded pair difference at
  ``blocks.L.resid_pre`` (``--layer L``).
- ``concept`` (PCA over paired differences): ``--positive``/``--negative`` text files, one example a line.
- ``icv`` (Li et al. 2024, the ICL state vector): ``--demos`` a file of ``input<TAB>answer`` lines, ``--query``
  the dummy query closing the demonstrations, ``--separator``, ``--optimize none|inner|momentum``.
- ``vas`` (Han et al. 2024, a value model): ``--prompts`` a file, one prompt a line; the base's own samples are
  scored by a world labelling function (``--reward sentiment:positive``: +1 for a continuation with that label,
  -1 for the opposite, 0 otherwise) and a small value estimator is fit to them by TD(lambda).

Use vectors with ``lmlab generate MODEL --steer FILE --coeff C`` and value models with
``lmlab generate MODEL --guide vas --guide-model FILE [--guide-scale BETA]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmlab.cli.common import add_model_argument, load_model_and_tokenizer
from lmlab.errors import LmlabError

NEEDS = {"actadd": ("positive", "negative", "layer"), "concept": ("positive", "negative", "layer"),
         "icv": ("demos", "query"), "vas": ("prompts", "reward")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--method", choices=list(NEEDS), default="actadd")
    p.add_argument("--positive", help="actadd: prompt text; concept: text file, one example a line")
    p.add_argument("--negative", help="actadd: prompt text; concept: text file, one example a line")
    p.add_argument("--layer", type=int, help="actadd/concept: block whose resid_pre is read (and later steered)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    icv = p.add_argument_group("icv: in-context (state) vector")
    icv.add_argument("--demos",
                     help="file of demonstrations, one 'input<TAB>answer' a line (the answer gets a leading space)")
    icv.add_argument("--query", help="the dummy query that closes the demonstrations")
    icv.add_argument("--separator", default=" ->", help="text between input and answer (default ' ->')")
    icv.add_argument("--optimize", choices=["none", "inner", "momentum"], default="momentum",
                     help="the paper's refinement (default momentum)")
    icv.add_argument("--icv-layers", type=int, default=None, help="patch the first N layers (default 45%%)")
    vas = p.add_argument_group("vas: value model for value augmented sampling")
    vas.add_argument("--prompts", help="file of prompts, one a line, whose continuations are sampled and scored")
    vas.add_argument("--reward", help="AXIS:VALUE from the world's labelling functions, e.g. sentiment:positive, "
                                      "formality:formal, politeness:polite")
    vas.add_argument("--value-d-model", type=int, default=64, help="value estimator width (default 64)")
    vas.add_argument("--value-layers", type=int, default=2, help="value estimator layers (default 2)")
    vas.add_argument("--samples-per-prompt", type=int, default=4)
    vas.add_argument("--sample-tokens", type=int, default=8, help="tokens per sampled continuation (default 8)")
    vas.add_argument("--epochs", type=int, default=10)
    vas.add_argument("--lr", type=float, default=3e-3)
    vas.add_argument("--td-lambda", type=float, default=0.95, help="TD(lambda) of the value targets (default 0.95)")
    vas.add_argument("--vas-beta", type=float, default=1.0, help="default beta stored in the file (trl: 1)")
    vas.add_argument("--vas-top-k", type=int, default=10, help="candidates re-scored per step (trl: 10)")
    vas.add_argument("--seed", type=int, default=0)


def _lines(path: str, flag: str) -> list[str]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise LmlabError(f"{flag} {path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise LmlabError(f"{flag} {path}: cannot read (not UTF-8 text)") from None
    if not lines:
        raise LmlabError(f"{flag} {path}: no non-empty lines")
    return lines


def _demos(path: str) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(_lines(path, "--demos"), 1):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise LmlabError(f"--demos {path}: line {i} is not 'input<TAB>answer'")
        out.append((parts[0].strip(), " " + parts[1].strip()))
    return out


def reward_from_spec(spec: str, tokenizer):
    """``AXIS:VALUE`` -> reward_fn(prompt ids, response ids): label x target label of the decoded response."""
    from lmlab.data.world.attribute_text import AXES, LABELLERS

    axis, _, value = spec.partition(":")
    if axis not in AXES:
        raise LmlabError(f"--reward {spec!r}: axis must be one of {', '.join(AXES)} (as AXIS:VALUE)")
    targets = {word: label for label, (word, _) in AXES[axis].items() if label != 0}
    if value not in targets:
        raise LmlabError(f"--reward {spec!r}: value must be one of {', '.join(targets)} for {axis}")
    label, target = LABELLERS[axis], targets[value]
    return lambda prompt, response: float(label(tokenizer.decode(response)) * target)


def _vas(model, tokenizer, args) -> dict:
    from lmlab.control import ValueModel, fit_value_model
    from lmlab.control.vas_file import save_value_model
    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer

    reward = reward_from_spec(args.reward, tokenizer)
    prompts = [tokenizer.encode(t) for t in _lines(args.prompts, "--prompts")]
    c = model.config
    trunk = Transformer(ModelConfig.llama_like(vocab_size=c.vocab_size, d_model=args.value_d_model,
                                               n_layers=args.value_layers, n_heads=4,
                                               max_seq_len=min(c.max_seq_len, 1024))).init_weights(seed=args.seed)
    vm = ValueModel(trunk, seed=args.seed)
    report = fit_value_model(vm, model, prompts, reward, samples_per_prompt=args.samples_per_prompt,
                             max_new_tokens=args.sample_tokens, td_lambda=args.td_lambda, epochs=args.epochs,
                             lr=args.lr, seed=args.seed, pad_id=tokenizer.pad_id or 0)
    meta = {"method": "vas", "reward": args.reward, "prompts": len(prompts), "fit": vars(report)}
    path = save_value_model(args.out, vm, model, beta=args.vas_beta, top_k=args.vas_top_k, meta=meta)
    return {"out": str(path), "kind": "vas_value_model", "value_params": trunk.num_parameters(),
            "base_params": model.num_parameters(), "samples": report.samples,
            "reward_mean": round(report.reward_mean, 4), "loss_first": round(report.loss_first, 4),
            "loss_last": round(report.loss_last, 4)}


def run(args: argparse.Namespace) -> int:
    from lmlab.steer import actadd, concept_direction, in_context_vector

    missing = [f"--{n}" for n in NEEDS[args.method] if getattr(args, n) is None]
    if missing:
        raise LmlabError(f"--method {args.method} needs {', '.join(missing)}")
    # bad files and options fail before the model loads
    demos = _demos(args.demos) if args.method == "icv" else None
    if args.method == "vas":
        reward_from_spec(args.reward, None)
        _lines(args.prompts, "--prompts")
        if args.value_d_model < 8 or args.value_d_model % 4 or args.value_layers < 1:
            raise LmlabError("--value-d-model must be a multiple of 4 (>= 8) and --value-layers >= 1")
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype)
    model.eval()
    if args.method == "vas":
        print(json.dumps(_vas(model, tokenizer, args)))
        return 0
    if args.method == "icv":
        sv = in_context_vector(model, tokenizer, demos, args.query, separator=args.separator,
                               optimize=args.optimize, n_layers=args.icv_layers)
        path = sv.save(args.out)
        print(json.dumps({"out": str(path), "kind": "icl_state_vector", "hooks": sv.hooks,
                          "shape": list(sv.vector.shape), "fingerprint": sv.fingerprint}))
        return 0
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
