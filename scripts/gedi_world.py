"""GeDi on the world's sentiment attribute: a tiny class-conditional guide steers the reference model.

    PYTHONPATH=src python scripts/gedi_world.py

The guide (Llama-style, d_model 64, 2 layers: ~1/8 of the reference model's parameters, same tokenizer) is
trained from scratch as a class-conditional LM on ``world.attribute_examples()`` sentences of positive and
negative sentiment, each prefixed with its control code ("positive" / "negative"); generative loss only (the
paper's hybrid objective adds a discriminative term; not used here). Base: the reference model (never saw
attribute text). Prompts: "NAME is" for the world's 60 people; 8 new tokens, greedy. Reported: the share of
continuations ``label_sentiment`` scores positive / negative, their perplexity under the base model, and
distinct-2, for plain decoding and GeDi at several omega.
"""

from __future__ import annotations

import math
import random

import torch

from lmlab.control import GeDi, GeDiConfig
from lmlab.core.config import ModelConfig
from lmlab.core.generate import generate
from lmlab.core.model import Transformer
from lmlab.data.world.attributes import label_sentiment
from lmlab.reference import load_reference


def train_guide(tok, examples, vocab: int, steps: int = 300, seed: int = 0) -> Transformer:
    cfg = ModelConfig.llama_like(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)
    guide = Transformer(cfg).init_weights(seed=seed)
    rows = [tok.encode(("positive" if s > 0 else "negative") + " " + t) for t, s in examples]
    opt = torch.optim.AdamW(guide.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(seed)
    for step in range(steps):
        batch = rng.sample(rows, 32)
        T = max(len(r) for r in batch)
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        mask = torch.zeros(len(batch), T)
        for i, r in enumerate(batch):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        logp = guide(ids)[:, :-1].log_softmax(-1)
        nll = -(logp.gather(2, ids[:, 1:, None])[..., 0] * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        nll.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"guide step {step}: loss {float(nll.detach()):.3f}")
    return guide.eval()


@torch.no_grad()
def base_perplexity(model, outs, prompts) -> float:
    nll, n = 0.0, 0
    for o, p in zip(outs, prompts):
        x = torch.tensor([o])
        logp = model(x)[0, :-1].log_softmax(-1)
        tgt = x[0, 1:]
        lp = logp.gather(1, tgt[:, None])[:, 0][len(p) - 1:]
        nll -= float(lp.sum())
        n += len(lp)
    return math.exp(nll / n)


def distinct2(texts) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        pairs = list(zip(w, w[1:]))
        grams.update(pairs)
        total += len(pairs)
    return len(grams) / max(total, 1)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ref = load_reference()
    m, tok, world = ref.model, ref.tokenizer, ref.world
    examples = [(e.text, e.sentiment) for e in world.attribute_examples() if e.sentiment != 0]
    guide = train_guide(tok, examples, m.config.vocab_size)
    print(f"guide parameters: {guide.num_parameters():,} vs base {m.num_parameters():,}")
    prompts = [tok.encode(f"{e.name} is") for e in world.entities["person"]]
    pos, neg = tok.encode("positive"), tok.encode("negative")
    print("| decoding | positive | negative | base perplexity | distinct-2 |\n|---|---|---|---|---|")
    for name, procs in [("plain", [])] + [(f"GeDi omega={w:g}", [GeDi(guide, pos, neg, GeDiConfig(omega=w), base=m)])
                                          for w in (1.0, 10.0, 30.0)]:
        outs = generate(m, prompts, max_new_tokens=8, stop_token_ids=[], logits_processors=procs)
        texts = [tok.decode(o[len(p):]) for o, p in zip(outs, prompts)]
        labels = [label_sentiment(t) for t in texts]
        print(f"| {name} | {sum(x > 0 for x in labels) / len(labels):.2f} | {sum(x < 0 for x in labels) / len(labels):.2f}"
              f" | {base_perplexity(m, outs, prompts):.2f} | {distinct2(texts):.2f} |")
        print("   e.g.", repr(texts[0]), repr(texts[1]))


if __name__ == "__main__":
    main()
