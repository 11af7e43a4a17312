"""Batch-level BPE merges for dynamic tokenization (Feher, Vulić & Minixhofer 2024, "Retrofitting (Large)
Language Models with Dynamic Tokenization", §3): the merges are learned *from the batch itself* -- count adjacent
unit pairs over every row of the batch, merge the most frequent pair everywhere, repeat up to a merge budget --
so a batch of repetitive text gets long tokens and the vocabulary is whatever the batch needs.

Why a pure function of the batch: the merged sequences, the new tokens and their order depend only on the
multiset of rows (counts are summed over rows, ties are broken by the pair's id tuples, never by row order), so
scoring a batch twice, or with its rows permuted, gives the same tokenization.

Boundaries (the paper's "word-level boundaries" for encoders; for decoders it also merges across words): with
``word_boundaries=True`` a pair is merged only when its right unit does not start a word (byte-level BPE's
``Ġ`` / SentencePiece's ``▁`` prefix), so merged tokens stay inside words; special tokens are never merged.
Choices the paper leaves open, ours: pairs seen fewer than ``min_frequency`` (2) times in the batch are not merged
(a merge seen once saves one position but adds a whole new embedding), and a merged token has at most
``max_parts`` original tokens (the hypernetwork's input length).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError

Unit = tuple[int, ...]  # the original token ids a (possibly merged) token stands for


@dataclass
class DynamicBatch:
    """A batch re-tokenized with its own merges.

    ``ids`` [B, T']: original ids (< ``vocab_size``) or ``vocab_size + k`` for ``merged[k]``; right-padded with 0
    where ``attention_mask`` [B, T'] is 0.  ``starts`` [B, T']: the original position of each unit's first token
    (the map back to the unmerged sequence); ``lengths`` [B]: real units per row; ``merges``: the pairs merged,
    in order.
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    merged: list[Unit]
    merges: list[tuple[Unit, Unit]]
    vocab_size: int

    @property
    def n_units(self) -> int:
        return int(self.lengths.sum())


def word_start_ids(tokenizer) -> set[int]:
    """Ids whose token string begins a word (a leading space marker) -- merges never cross these."""
    out = set()
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=True).items():
        if token.startswith(("Ġ", "▁", " ")):
            out.add(i)
    return out


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS/EOS/PAD/UNK, added specials): never merged."""
    ids = {tokenizer.token_to_id(t) for t in tokenizer.special_tokens.values() if t}
    return {i for i in ids if i is not None}


def _check_rows(rows: Sequence[Sequence[int]], vocab_size: int) -> list[list[int]]:
    if not rows:
        raise LmlabError("batch_merges: the batch has no rows")
    out = []
    for r, row in enumerate(rows):
        row = [int(i) for i in row]
        if not row:
            raise LmlabError(f"batch_merges: row {r} is empty")
        if any(not 0 <= i < vocab_size for i in row):
            raise LmlabError(f"batch_merges: row {r} has an id outside 0..{vocab_size - 1}")
        out.append(row)
    return out


def batch_merges(rows: Sequence[Sequence[int]], vocab_size: int, budget: int, *, word_starts: set[int] = frozenset(),
                 specials: set[int] = frozenset(), word_boundaries: bool = True, min_frequency: int = 2,
                 max_parts: int = 8) -> DynamicBatch:
    """Merge the most frequent adjacent pair of the batch ``rows`` (lists of original ids) up to ``budget`` times.

    ``budget=0`` returns the rows unchanged (every unit one original token)."""
    if budget < 0:
        raise LmlabError(f"batch_merges: budget must be >= 0, got {budget}")
    if min_frequency < 1 or max_parts < 2:
        raise LmlabError("batch_merges: min_frequency must be >= 1 and max_parts >= 2")
    units: list[list[Unit]] = [[(i,) for i in row] for row in _check_rows(rows, vocab_size)]

    def mergeable(a: Unit, b: Unit) -> bool:
        if len(a) + len(b) > max_parts or a[0] in specials or b[0] in specials:
            return False
        return not (word_boundaries and b[0] in word_starts)

    merges: list[tuple[Unit, Unit]] = []
    for _ in range(budget):
        counts: Counter = Counter()
        for row in units:
            for a, b in zip(row, row[1:]):
                if mergeable(a, b):
                    counts[(a, b)] += 1
        if not counts:
            break
        best = max(counts.values())
        if best < min_frequency:
            break
        pair = min(p for p, c in counts.items() if c == best)  # deterministic tie-break, independent of row order
        merges.append(pair)
        for r, row in enumerate(units):
            out, i = [], 0
            while i < len(row):
                if i + 1 < len(row) and row[i] == pair[0] and row[i + 1] == pair[1]:
                    out.append(pair[0] + pair[1])
                    i += 2
                else:
                    out.append(row[i])
                    i += 1
            units[r] = out
    merged = sorted({u for row in units for u in row if len(u) > 1})
    index = {u: vocab_size + k for k, u in enumerate(merged)}
    B, T = len(units), max(len(row) for row in units)
    ids = torch.zeros(B, T, dtype=torch.long)  # [B, T']
    mask = torch.zeros(B, T, dtype=torch.long)  # [B, T']
    starts = torch.zeros(B, T, dtype=torch.long)  # [B, T']
    for r, row in enumerate(units):
        pos = 0
        for t, u in enumerate(row):
            ids[r, t] = u[0] if len(u) == 1 else index[u]
            mask[r, t] = 1
            starts[r, t] = pos
            pos += len(u)
    lengths = mask.sum(1)  # [B]
    return DynamicBatch(ids, mask, starts, lengths, merged, merges, vocab_size)
