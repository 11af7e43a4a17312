"""Shared fixtures: a word-level tokenizer sized to the tiny HF models, and the world's parallel text."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_models import VOCAB

from lmlab.core.tokenizer import Tokenizer


def word_tokenizer(n: int = VOCAB) -> Tokenizer:
    """Word-level tokenizer with exactly ``n`` tokens: <unk>, <s>, then w2..w{n-1}."""
    vocab = {"<unk>": 0, "<s>": 1, **{f"w{i}": i for i in range(2, n)}}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(backend, {"bos_token": "<s>", "eos_token": "<s>", "unk_token": "<unk>"})


@pytest.fixture(scope="session")
def world_text():
    """(base documents, lang_a documents, alignment dictionary half, held-out lexicon half)."""
    from lmlab.adapt.wechsel import split_words
    from lmlab.data.world import build_world

    w = build_world()
    base = w.training_documents()
    target = [w.translate(d, "lang_a") for d in base]
    seen = {x for s in split_words(base) for x in s}
    lexicon = w.languages["lang_a"].lexicon
    used = sorted(b for b in lexicon if b in seen)
    random.Random(0).shuffle(used)
    half = len(used) // 2
    return base, target, {b: lexicon[b] for b in used[:half]}, {b: lexicon[b] for b in used[half:]}
