"""Shared fixtures: the shipped reference model and tokenised world preference pairs of uneven lengths."""

from __future__ import annotations

import pytest

from lmlab.align.preference_data import tokenize_record, world_preferences
from lmlab.reference import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def mixed_pairs(ref):
    """``mixed_pairs(n)``: the first ``n`` training pairs plus the first ``n`` politeness pairs, tokenised
    (uneven lengths)."""

    def pick(n: int):
        records = world_preferences(ref.world, "train")
        picked = records[:n] + [r for r in records if r.meta["reason"] == "politeness"][:n]
        return [tokenize_record(ref.tokenizer, r) for r in picked]

    return pick
