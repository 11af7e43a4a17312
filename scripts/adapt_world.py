"""Language adaptation on the world, measured: the shipped reference model (trained on the base language only)
moved to each derived language with a new tokenizer.

Reports, per derived language: tokens per sentence (old vs new tokenizer), WECHSEL's nearest-neighbour match
with the known lexicon on held-out words (the dictionary used for alignment is the other half of the lexicon),
and the zero-shot loss (nats per character, comparable across tokenizers) of each initialisation before any
training.  Usage: ``python scripts/adapt_world.py`` (about a minute on one core).
"""

from __future__ import annotations

import random

import torch

from lmlab.adapt import WechselConfig, swap_tokenizer, wechsel_mapping
from lmlab.adapt.wechsel import split_words
from lmlab.core.tokenizer import train_bpe
from lmlab.reference import load_reference


def whole_token(tokenizer, word: str) -> int | None:
    """The id of `` word`` when the tokenizer keeps it as one token (byte-level: any script)."""
    ids = tokenizer.encode(" " + word)
    return ids[0] if len(ids) == 1 else None


def nats_per_char(model, tokenizer, texts: list[str]) -> float:
    total, chars = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode(text)[: model.config.max_seq_len]
            if len(ids) < 2:
                continue
            logits = model(torch.tensor([ids]))[0, :-1]  # [T-1, vocab]
            total += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            chars += len(tokenizer.decode(ids[1:]))
    return total / chars


def main() -> None:
    torch.set_num_threads(1)
    ref = load_reference()
    world, src_tok = ref.world, ref.tokenizer
    base = world.training_documents()
    seen = {w for s in split_words(base) for w in s}
    print(f"reference model: vocab {len(src_tok)}, {len(base)} base documents")
    for code in ("lang_a", "lang_b"):
        target = [world.translate(d, code) for d in base]
        lexicon = world.languages[code].lexicon
        used = sorted(b for b in lexicon if b in seen)
        random.Random(0).shuffle(used)
        half = len(used) // 2
        dictionary, held_out = {b: lexicon[b] for b in used[:half]}, {b: lexicon[b] for b in used[half:]}
        tgt_tok = train_bpe(target, len(src_tok))
        n_sent = sum(d.count(".") for d in target)
        old = sum(len(src_tok.encode(d)) for d in target) / n_sent
        new = sum(len(tgt_tok.encode(d)) for d in target) / n_sent
        base_tok = sum(len(src_tok.encode(d)) for d in base) / sum(d.count(".") for d in base)
        print(f"\n## {code}: {len(dictionary)} dictionary pairs, {len(held_out)} held-out words")
        print(f"tokens per sentence: base text / old tokenizer {base_tok:.1f}; {code} text / old tokenizer "
              f"{old:.1f}, / new tokenizer {new:.1f}")
        sources, _ = wechsel_mapping(src_tok, tgt_tok, base, target, dictionary)
        top1 = top10 = n = 0
        for b, t in held_out.items():
            i, j = whole_token(tgt_tok, t), whole_token(src_tok, b)
            if i is None or j is None or not sources[i]:
                continue
            n += 1
            top1 += sources[i][0] == j
            top10 += j in sources[i]
        n_src = len({j for s in sources for j in s})
        print(f"WECHSEL neighbours (held-out words that are whole tokens in both): top-1 {top1}/{n} = {top1 / max(n, 1):.2f}, "
              f"in top-10 {top10}/{n} = {top10 / max(n, 1):.2f}; chance top-1 ~ 1/{n_src} = {1 / n_src:.3f}")
        heldout_text = target[-60:]
        rows = [("old model, old tokenizer", ref.model, src_tok)]
        for name, init, copy in [("wechsel", "wechsel", False), ("wechsel + overlap copy", "wechsel", True),
                                 ("mean + overlap copy (FOCUS-style baseline)", "mean", True),
                                 ("mean", "mean", False), ("random", "random", False)]:
            kwargs = {"source_texts": base, "target_texts": target, "dictionary": dictionary, "config": WechselConfig()}
            model = swap_tokenizer(ref.model, src_tok, tgt_tok, init, copy_overlap=copy,
                                   **(kwargs if init == "wechsel" else {}))
            rows.append((name, model, tgt_tok))
        for name, model, tok in rows:
            print(f"zero-shot {code} loss, {name}: {nats_per_char(model, tok, heldout_text):.3f} nats/char")


if __name__ == "__main__":
    main()
