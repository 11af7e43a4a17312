"""Tokenizer swap: give a model a new tokenizer's vocabulary, with the new embedding rows initialised.

``init``:
  * ``"wechsel"``: see ``wechsel`` (needs source/target texts and a bilingual dictionary);
  * ``"mean"``: every row = the mean of the source rows;
  * ``"random"``: normal with the source rows' mean and std (the WECHSEL paper's random baseline).
``copy_overlap=True`` (FOCUS-style, Dobler & de Melo 2023): tokens whose string is in both vocabularies keep
their source row exactly, and only the rest are initialised by ``init``.  With the identity mapping (target
tokenizer == source tokenizer) every row is copied, so the swapped model reproduces the source model exactly.
Pure WECHSEL as in the paper is ``init="wechsel", copy_overlap=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from lmlab.adapt.resize import RowMapping, apply_row_mapping
from lmlab.adapt.wechsel import WechselConfig, wechsel_mapping
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import Tokenizer, check_fits_embedding
from lmlab.errors import LmlabError

SWAP_INITS = ("wechsel", "mean", "random")


def swap_tokenizer(model: Transformer, source_tokenizer: Tokenizer, target_tokenizer: Tokenizer, init: str = "wechsel",
                   *, copy_overlap: bool = True, source_texts: Iterable[str] = (), target_texts: Iterable[str] = (),
                   dictionary: Mapping[str, str] | None = None, config: WechselConfig | None = None,
                   seed: int = 0) -> Transformer:
    """A new model whose vocabulary is ``target_tokenizer``'s (rows = its max id + 1)."""
    if init not in SWAP_INITS:
        raise LmlabError(f"swap_tokenizer: init must be one of {', '.join(SWAP_INITS)}, got {init!r}")
    check_fits_embedding(source_tokenizer, model.config.vocab_size, "swap_tokenizer source tokenizer")
    n_src, n_new = model.config.vocab_size, target_tokenizer.max_token_id + 1
    src_vocab = source_tokenizer.backend.get_vocab(with_added_tokens=True)
    tgt_vocab = target_tokenizer.backend.get_vocab(with_added_tokens=True)
    tgt_by_id = {i: t for t, i in tgt_vocab.items()}
    if init == "wechsel":
        if dictionary is None:
            raise LmlabError("swap_tokenizer: init='wechsel' needs a bilingual dictionary")
        sources, weights = wechsel_mapping(source_tokenizer, target_tokenizer, list(source_texts),
                                           list(target_texts), dictionary, config)
    elif init == "mean":
        sources, weights = [list(range(n_src))] * n_new, [[1.0 / n_src] * n_src] * n_new
    else:
        sources, weights = [[] for _ in range(n_new)], [[] for _ in range(n_new)]
    sources, weights = list(sources), list(weights)
    if copy_overlap:
        for i in range(n_new):
            j = src_vocab.get(tgt_by_id.get(i))
            if j is not None:
                sources[i], weights[i] = [j], [1.0]
    new = apply_row_mapping(model, RowMapping(n_new, sources, weights, seed))
    new.config = _special_ids_for(model.config, target_tokenizer)
    return new


def _special_ids_for(config, target_tokenizer: Tokenizer):
    """The config with BOS/EOS/PAD ids re-pointed at the target tokenizer's: the source ids name rows of the OLD
    vocabulary, which in the new one are other tokens.  A special token the model uses (its config names an id)
    that the target tokenizer lacks is an error."""
    updates = {}
    for field, attr, what in (("bos_token_id", "bos_id", "beginning-of-text"), ("eos_token_id", "eos_id", "end-of-text"),
                              ("pad_token_id", "pad_id", "padding")):
        old, new = getattr(config, field), getattr(target_tokenizer, attr)
        if old is not None and new is None and field != "pad_token_id":
            raise LmlabError(f"swap_tokenizer: the model's config names a {what} token ({field}={old}) but the target "
                             f"tokenizer has none; add it to the target tokenizer's special tokens")
        if old is not None or new is not None:
            updates[field] = new
    return dataclasses.replace(config, **updates)
