"""Vocabulary extension: add new tokens to a tokenizer and grow the model to match, old tokens untouched.

New tokens are added as ``tokenizers`` added tokens (HF ``add_tokens``), matched as whole words
(``single_word=True``) so an added word never splits an old word.  The old ids keep their rows bit-for-bit,
so on text using only old tokens the extended model's old-token logits equal the original's exactly.

Initialisations for the new rows (``init``):
  * ``"subword_mean"`` (default): mean of the rows of the pieces the OLD tokenizer splits the token into -- the
    common practice for extension (e.g. LEP's and Hewitt's recipes start from it);
  * ``"mean"``: mean of all old rows;  * ``"random"``: normal with the old rows' mean and std.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from tokenizers import AddedToken

from lmlab.adapt.resize import RowMapping, apply_row_mapping
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import Tokenizer, check_fits_embedding
from lmlab.errors import LmlabError

EXTEND_INITS = ("subword_mean", "mean", "random")


def _check_new_tokens(tokenizer: Tokenizer, new_tokens: Sequence[str], special: bool) -> list[str]:
    if isinstance(new_tokens, str):
        raise LmlabError("extend_vocabulary: new_tokens must be a list of str, got a single str")
    tokens = list(dict.fromkeys(new_tokens))
    for t in tokens:
        if not isinstance(t, str) or not t.strip():
            raise LmlabError(f"extend_vocabulary: new token {t!r} must be a non-empty string")
    model_specials = set(tokenizer.special_tokens.values()) | set(tokenizer._extra)
    clash = [t for t in tokens if t in model_specials]
    if clash:
        raise LmlabError(f"extend_vocabulary: new token(s) {clash[:5]} collide with the model's special tokens")
    if special:
        existing = [t for t in tokens if tokenizer.token_to_id(t) is not None]
        if existing:
            raise LmlabError(f"extend_vocabulary: new special token(s) {existing[:5]} are already in the vocabulary")
    return tokens


def extend_vocabulary(model: Transformer, tokenizer: Tokenizer, new_tokens: Sequence[str], init: str = "subword_mean",
                      special: bool = False, seed: int = 0) -> tuple[Transformer, Tokenizer]:
    """Add ``new_tokens`` (those not already in the vocabulary) and return a grown model and tokenizer.

    The inputs are not modified.  ``special=True`` adds them as special tokens (skipped on decode).
    """
    if init not in EXTEND_INITS:
        raise LmlabError(f"extend_vocabulary: init must be one of {', '.join(EXTEND_INITS)}, got {init!r}")
    check_fits_embedding(tokenizer, model.config.vocab_size, "extend_vocabulary")
    tokens = _check_new_tokens(tokenizer, new_tokens, special)
    fresh = [t for t in tokens if tokenizer.token_to_id(t) is None]
    pieces = {t: tokenizer.encode(t) for t in fresh}  # old-tokenizer split, before adding
    new_tok = Tokenizer(copy.deepcopy(tokenizer.backend), tokenizer._config, source=tokenizer.source)
    added = [AddedToken(t, single_word=True, normalized=False, special=special) for t in fresh]
    if added:
        (new_tok.backend.add_special_tokens if special else new_tok.backend.add_tokens)(added)
    n_old = model.config.vocab_size
    n_new = max(n_old, new_tok.max_token_id + 1)
    by_id = {new_tok.token_to_id(t): t for t in fresh}
    sources, weights = [], []
    all_old, uniform = list(range(n_old)), [1.0 / n_old] * n_old  # shared objects: the mean is computed once
    for i in range(n_new):
        token = by_id.get(i)
        if token is None:  # an old row (or padding past the tokenizer): copied exactly
            sources.append([i] if i < n_old else [])
            weights.append([1.0] if i < n_old else [])
            continue
        if init == "mean":
            sources.append(all_old)
            weights.append(uniform)
            continue
        ids = [j for j in pieces[token] if j < n_old and j not in by_id] if init == "subword_mean" else []
        sources.append(ids)
        weights.append([1.0 / len(ids)] * len(ids) if ids else [])
    return apply_row_mapping(model, RowMapping(n_new, sources, weights, seed)), new_tok
