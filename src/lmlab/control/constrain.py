"""Constrained decoding: forbidden token ids and forbidden strings, also when a string spans tokens.

``ForbidTokens`` sets the logits of given ids to -inf at every step. ``ForbidStrings`` keeps each row's
generated text and masks every candidate token that would *complete* a forbidden string: a token whose text
contains the string, or whose text starts with the rest of a string whose beginning the row's text already
ends with ("... the ca" + "t" completes "cat"). Only generated text is checked (a string that began in the
prompt is not counted). The per-string lookup tables are built once, so a step costs O(rows x string length).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmlab.core.processors import StatefulProcessor, StepInfo
from lmlab.errors import LmlabError


class ForbidTokens:
    """``fn(ids, logits)``: logits of ``token_ids`` set to -inf."""

    def __init__(self, token_ids: Sequence[int], vocab_size: int | None = None) -> None:
        ids = sorted({int(t) for t in token_ids})
        if vocab_size is not None and ids and (ids[0] < 0 or ids[-1] >= vocab_size):
            raise LmlabError(f"ForbidTokens: token ids must be in [0, {vocab_size}), got {ids[0]}..{ids[-1]}")
        self.ids = torch.tensor(ids, dtype=torch.long)

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:  # logits [B, V]
        if len(self.ids):
            logits = logits.clone()
            logits[:, self.ids.to(logits.device)] = float("-inf")
        return logits


class ForbidStrings(StatefulProcessor):
    """Mask tokens that would complete any of ``strings`` in a row's generated text."""

    def __init__(self, tokenizer, strings: Sequence[str], vocab_size: int) -> None:
        self.strings = [s for s in strings]
        if not self.strings or any(not s for s in self.strings):
            raise LmlabError("ForbidStrings: give at least one non-empty string")
        self.tokenizer = tokenizer
        pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in range(vocab_size)]
        self.contains = torch.tensor(sorted({t for t, p in enumerate(pieces) if any(s in p for s in self.strings)}),
                                     dtype=torch.long)
        # completes[(s, k)]: tokens whose text starts with s[k:] (complete s after a text ending with s[:k])
        self.completes: dict[tuple[int, int], torch.Tensor] = {}
        for i, s in enumerate(self.strings):
            for k in range(1, len(s)):
                rest = s[k:]
                hit = [t for t, p in enumerate(pieces) if p.startswith(rest)]
                if hit:
                    self.completes[(i, k)] = torch.tensor(hit, dtype=torch.long)

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        logits = logits.clone()
        if len(self.contains):
            logits[:, self.contains.to(logits.device)] = float("-inf")
        width = ids.shape[1]
        for b, n_new in enumerate(info.new_tokens.tolist()):
            if n_new == 0:
                continue
            text = self.tokenizer.decode(ids[b, width - n_new:].tolist())
            for (i, k), toks in self.completes.items():
                if text.endswith(self.strings[i][:k]):
                    logits[b, toks.to(logits.device)] = float("-inf")
        return logits
