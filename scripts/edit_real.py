"""ROME and MEMIT on a real checkpoint (default SmolLM2-135M-Instruct) with the hand-written real facts in
CounterFact format (``lmlab/assets/edit/real_counterfact.jsonl``): efficacy, paraphrase and neighbourhood scores
(CounterFact's probability comparisons and greedy exact match) before and after editing the first N facts.

Key statistics: English text shipped with Python itself (``pydoc_data.topics``, the language reference's prose),
cut into paragraphs, the first ``--stats-keys`` key positions (cached by model fingerprint, layer, corpus, count).
Prompts carry no BOS (SmolLM2's plain text does not start with one, see ``lmlab.edit.counterfact.without_bos``).

    python scripts/edit_real.py --n 10 --methods rome,memit
    python scripts/edit_real.py --n 100 --methods memit
    python scripts/edit_real.py --n 10 --methods rome --set context_template_length_params='[[5,10],[10,10]]'
    python scripts/edit_real.py --n 10 100 --methods ike     # IKE: 32 demonstrations from the other facts

IKE's pool is the whole file; an edit's own case never supplies its demonstrations (leave-one-out).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import yaml

import lmlab
from lmlab.edit import edit
from lmlab.edit.counterfact import counterfact_scores, read_counterfact, without_bos


def python_docs_corpus(max_chars: int = 1500) -> list[str]:
    """Paragraphs of ``pydoc_data.topics`` (English prose shipped with CPython), each at most ``max_chars``."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 80:
                out.append(para[:max_chars])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--facts", default=None, help="CounterFact JSONL (default: the shipped real facts)")
    p.add_argument("--n", type=int, nargs="+", default=[10])
    p.add_argument("--methods", default="rome,memit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="hyperparameters for every method")
    p.add_argument("--stats-keys", type=int, default=20000, help="key positions for the second moments")
    p.add_argument("--stats-dir", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    if args.methods == "ike" and settings:
        raise SystemExit("--set applies to rome/memit only")
    # ROME's and MEMIT's reference runs (GPT-2 XL, GPT-J) use 5 + 5 templates / 5 templates of prefixes: this
    # script uses MEMIT's ((10, 5),) for both unless --set says otherwise (ROME's 21 rows per step cost 3x more).
    settings.setdefault("context_template_length_params", [[10, 5]])
    settings["context_template_length_params"] = tuple(tuple(x) for x in settings["context_template_length_params"])
    settings["mom2_n_samples"] = args.stats_keys
    model = lmlab.load(args.model)
    tok = without_bos(lmlab.load_tokenizer(args.model))
    corpus = python_docs_corpus()
    cols = ["efficacy_score", "paraphrase_score", "neighbourhood_score", "efficacy", "paraphrase"]
    print(f"model {args.model}; corpus pydoc_data.topics ({len(corpus)} paragraphs), {args.stats_keys} keys")
    print("| method | N | " + " | ".join(cols) + " | edit seconds |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for n in args.n:
        cases = read_counterfact(args.facts, n)
        base = counterfact_scores(model, tok, cases)
        print(f"| unedited | {n} | " + " | ".join(f"{base[c]:.3f}" for c in cols) + " | |", flush=True)
        for method in args.methods.split(","):
            if method == "ike":
                start = time.perf_counter()
                ctx = edit(model, tok, [c.request for c in cases], method="ike", pool=read_counterfact(args.facts))
                scores = counterfact_scores(model, tok, ctx.wrap_cases(cases))
                print(f"| ike (k=32) | {n} | " + " | ".join(f"{scores[c]:.3f}" for c in cols)
                      + f" | {time.perf_counter() - start:.0f} |", flush=True)
                continue
            start = time.perf_counter()
            delta = edit(model, tok, [c.request for c in cases], method=method, corpus=corpus,
                         stats_dir=args.stats_dir, **settings)
            seconds = time.perf_counter() - start
            scores = counterfact_scores(model, tok, cases)
            delta.revert(model)
            print(f"| {method} (layers {delta.metadata['layers']}) | {n} | "
                  + " | ".join(f"{scores[c]:.3f}" for c in cols) + f" | {seconds:.0f} |", flush=True)
            logs = delta.metadata["log"]
            print(f"  v*/z search: mean steps {sum(lg['steps'] for lg in logs) / len(logs):.1f}, mean target prob "
                  f"{sum(lg['target_prob'] for lg in logs) / len(logs):.3f}", flush=True)
    shown = {k: v for k, v in settings.items()}
    print("settings:", json.dumps(shown, default=list))


if __name__ == "__main__":
    main()
