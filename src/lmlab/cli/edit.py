"""``lmlab edit MODEL --method memit --edits edits.jsonl --corpus corpus.txt --out DIR``: write facts into a model.

DIR receives the edited model as a Hugging Face checkpoint (plus the tokenizer when MODEL has one) and the
weight delta in ``DIR/delta`` (``delta.safetensors`` + ``delta.json``, with the method, its resolved settings
and the requests), so the edit can be reverted or re-applied with ``lmlab.WeightDelta.load``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.errors import LmlabError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory (config.json + model.safetensors [+ tokenizer.json])")
    p.add_argument("--method", default="memit",
                   help="rome, memit, alphaedit, ike or rome_delete (default: memit; the registry in lmlab.edit.registry)")
    p.add_argument("--edits", required=True,
                   help="JSONL/JSON edit records: CounterFact requested_rewrite, EasyEdit prompt/subject/target_new, "
                        "or prompt/subject/target")
    p.add_argument("--corpus", required=True,
                   help="text file for the key statistics (documents separated by blank lines)")
    p.add_argument("--out", required=True, help="new directory for the edited checkpoint and its delta")
    p.add_argument("--stats-dir", default=None, help="statistics cache (default: ~/.cache/lmlab/edit-stats)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method setting, e.g. --set layers=[1,2] --set v_num_grad_steps=10 (repeatable)")


def _settings(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LmlabError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LmlabError(f"--set {key}: cannot parse {value!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    import lmlab
    from lmlab.edit import edit, read_edits

    model_dir, out = Path(args.model), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LmlabError(f"--out {out} exists and is not an empty directory (nothing written)")
    if args.method == "ike":
        raise LmlabError("--method ike edits by prompting and changes no weight, so there is no checkpoint to "
                         "write; use lmlab.edit.edit(..., method='ike', pool=cases) from Python")
    settings = _settings(args.set)
    for key in ("layers",):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    requests = read_edits(args.edits)
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise LmlabError(f"--corpus {corpus}: not a file")
    model = lmlab.load(model_dir)
    if not (model_dir / "tokenizer.json").exists():
        raise LmlabError(f"{model_dir}: no tokenizer.json (editing needs the model's tokenizer)")
    tokenizer = lmlab.load_tokenizer(model_dir)
    delta = edit(model, tokenizer, requests, method=args.method, corpus=corpus, stats_dir=args.stats_dir, **settings)
    lmlab.save(model, out, tokenizer=tokenizer)
    delta.save(out / "delta")
    names = ", ".join(delta.names())
    print(f"edited {len(requests)} fact(s) with {args.method} in {delta.metadata['seconds']:.1f}s ({names}) -> {out}",
          file=sys.stderr)
    return 0
