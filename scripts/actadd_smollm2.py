"""ActAdd's own demonstration on a real model: a "Love" - "Hate" vector at an early layer shifts the sentiment
of continuations of neutral and negative prompts (Turner et al. 2023, arXiv:2308.10248, Table/Fig. "Love - Hate":
GPT-2-XL, layer 6 of 48, coefficient 5, front injection).

    PYTHONPATH=src python scripts/actadd_smollm2.py                      # SmolLM2-135M-Instruct, ~2-4 minutes
    PYTHONPATH=src python scripts/actadd_smollm2.py --layer 4 --coeff 8

Scoring is offline: VADER's sentiment lexicon (the ``vaderSentiment`` package, ``compound`` in [-1, 1]) on each
continuation. Off-target cost: perplexity of unrelated factual paragraphs with the same vector injected the same
way (the paper reports perplexity on unrelated OpenWebText), against the unsteered model.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import lmlab
from lmlab.steer import actadd

NEUTRAL = ["I went to the store yesterday and", "The weather this afternoon is", "My neighbour told me that",
           "Today at work I", "The meeting on Monday was"]
NEGATIVE = ["I hate you because", "This is the worst day of my life and", "The food was awful and",
            "I am so angry that", "Nobody came to my party, so"]
UNRELATED = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthesize "
    "foods from carbon dioxide and water. It generally involves the green pigment chlorophyll.",
    "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions. It extends from the Arctic "
    "Ocean in the north to the Southern Ocean in the south.",
    "A prime number is a natural number greater than 1 that is not a product of two smaller natural numbers. "
    "The first primes are 2, 3, 5, 7 and 11.",
]


@torch.no_grad()
def perplexity(model, rows) -> float:
    nll, n = 0.0, 0
    for r in rows:
        x = torch.tensor([r])
        logp = model(x)[0, :-1].float().log_softmax(-1)
        nll -= float(logp.gather(1, x[0, 1:, None]).sum())
        n += len(r) - 1
    return math.exp(nll / n)


def score(analyzer, texts) -> tuple[float, float]:
    """(mean compound, share with compound > 0.05 -- VADER's 'positive' threshold)."""
    c = [analyzer.polarity_scores(t)["compound"] for t in texts]
    return sum(c) / len(c), sum(x > 0.05 for x in c) / len(c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layer", type=int, default=6, help="injection layer (paper: 6 of GPT-2-XL's 48)")
    p.add_argument("--coeff", type=float, default=5.0, help="coefficient (paper: 5)")
    p.add_argument("--samples", type=int, default=4, help="seeded samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    torch.set_num_threads(2)
    analyzer = SentimentIntensityAnalyzer()
    model = lmlab.load(args.model).eval()
    tok = lmlab.load_tokenizer(args.model)
    vec = actadd(model, tok, "Love", "Hate", layer=args.layer)
    unrelated = [tok.encode(t) for t in UNRELATED]
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9, seed=args.seed,
                    num_samples=args.samples, stop_token_ids=[])
    result = {"model": args.model, "layer": args.layer, "coeff": args.coeff, "samples": args.samples,
              "vector_rows": int(vec.vector.shape[0])}
    print(f"{args.model}: Love - Hate at blocks.{args.layer}.resid_pre, {vec.vector.shape[0]} positions, "
          f"coeff {args.coeff}, front injection; {args.samples} samples x {args.max_new_tokens} tokens per prompt")
    print("| prompts | steering | mean VADER compound | share positive |\n|---|---|---|---|")
    examples = {}
    for name, prompts in (("neutral", NEUTRAL), ("negative", NEGATIVE)):
        rows = [tok.encode(t) for t in prompts]
        for label, ctx in (("none", None), (f"Love-Hate x{args.coeff:g}", vec)):
            if ctx is None:
                outs = lmlab.generate(model, rows, **settings)
            else:
                with ctx.apply(model, coeff=args.coeff, positions="front"):
                    outs = lmlab.generate(model, rows, **settings)
            texts = [tok.decode(o[len(rows[i // args.samples]):]) for i, o in enumerate(outs)]
            mean, share = score(analyzer, texts)
            result[f"{name}/{'steered' if ctx else 'base'}"] = {"compound": mean, "positive_share": share}
            examples[f"{name}/{label}"] = prompts[0] + texts[0]
            print(f"| {name} ({len(prompts)} x {args.samples}) | {label} | {mean:+.3f} | {share:.2f} |")
    base_ppl = perplexity(model, unrelated)
    with vec.apply(model, coeff=args.coeff, positions="front"):
        steered_ppl = perplexity(model, unrelated)
    result["perplexity_unrelated"] = {"base": base_ppl, "steered": steered_ppl}
    print(f"\nperplexity of {len(unrelated)} unrelated paragraphs: {base_ppl:.2f} -> {steered_ppl:.2f} "
          f"({steered_ppl / base_ppl - 1:+.1%})")
    for k, v in examples.items():
        print(f"  e.g. [{k}] {v!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
