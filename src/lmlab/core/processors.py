"""The logits-processor protocol, and a processor that runs a second model in lock-step (guided decoding).

A logits processor is either

- a plain callable ``fn(ids, logits) -> logits`` (the transformers signature): ``ids`` [B, t] is each active
  row's prompt and generated tokens, right-aligned and left-padded with the pad id; ``logits`` [B, V] fp32; or
- a *stateful* processor, an object with any of these methods (:class:`StatefulProcessor` documents them and
  gives no-op defaults; inheriting from it is optional):

  ``start(prompts, max_new_tokens, row_ids)``
      rows join the batch: their unpadded prompts (``list[list[int]]``, so prompt lengths never have to be
      guessed from a pad id that may equal BOS), each row's ``max_new_tokens`` (``list[int]``) and the
      request ids the decoder gave them (``list[int]``). Called for the first rows and again for every row
      that joins a running batch later (continuous batching).
  ``step(ids, logits, info) -> logits``
      called instead of ``__call__`` at every decoding step; ``info`` (:class:`StepInfo`) says which rows are
      active, in batch order (``info.row_ids``), their prompt lengths and how many tokens each has generated.
      ``ids[:, -1]`` is each row's newest token: the last prompt token on a row's first step, then the token
      sampled at the previous step — the token a lock-stepped second model must consume next.
  ``finish(row_ids)``
      rows left the batch (a stop condition, ``max_new_tokens``, or ``Decoder.cancel``); rows that stay keep
      their relative order.

Rows are always in the decoder's batch order: joiners are appended after the running rows, leavers removed
without reordering the rest. A processor that raises becomes one ``LmlabError`` naming it; the decoder's
cache and rows are left as they were before the step (or before the join), so the caller can cancel rows or
drop the processor and carry on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lmlab.errors import LmlabError

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepInfo:
    """What a stateful processor learns at each step (all tensors [B], in batch order)."""

    row_ids: torch.Tensor  # request id of each active row
    prompt_lengths: torch.Tensor  # unpadded prompt length of each row
    new_tokens: torch.Tensor  # tokens generated so far by each row (0 on its first step)
    step: int  # the decoder's step counter (counts steps of the running batch, not of a row)


class StatefulProcessor:
    """Base class with no-op defaults for the stateful protocol; subclasses override what they need."""

    def start(self, prompts: list[list[int]], max_new_tokens: list[int], row_ids: list[int]) -> None:
        return None

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:
        return logits

    def finish(self, row_ids: list[int]) -> None:
        return None


def processor_name(proc) -> str:
    return getattr(proc, "__qualname__", None) or getattr(proc, "__name__", None) or type(proc).__name__


def run_processors(processors: Sequence, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:
    for proc in processors:
        try:
            step = getattr(proc, "step", None)
            logits = step(ids, logits, info) if step is not None else proc(ids, logits)
        except LmlabError as e:
            raise LmlabError(f"logits processor {processor_name(proc)} failed: {e}") from e
        except Exception as e:  # noqa: BLE001 - any failure of user code becomes one line naming it
            raise LmlabError(f"logits processor {processor_name(proc)} failed: {type(e).__name__}: {e}") from e
    return logits


def notify(processors: Sequence, method: str, *args) -> None:
    """Call ``method`` (start / finish) on every processor that has it; one LmlabError naming a failure."""
    for proc in processors:
        fn = getattr(proc, method, None)
        if fn is None:
            continue
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            raise LmlabError(f"logits processor {processor_name(proc)}.{method} failed: {type(e).__name__}: {e}") from e


class GuideProcessor(StatefulProcessor):
    """Adds ``weight`` x a second model's next-token log-probabilities to the logits (the guided-decoding
    pattern: a guide, expert or anti-expert model with its own KV cache, stepped in lock-step with the base).

    At ``start`` the guide prefills each prompt but its last token; at every ``step`` it consumes each row's
    newest token (``ids[:, -1]``), so one batched one-token forward serves rows that just joined and rows
    mid-generation alike. Rows that finish are dropped from the guide's cache too. The guide must share the
    base model's vocabulary.
    """

    def __init__(self, guide, weight: float = 1.0) -> None:
        self.guide, self.weight = guide, weight
        self.cache = None  # the guide's KVCache, rows in the decoder's batch order
        self.rows: list[int] = []

    @torch.no_grad()
    def start(self, prompts: list[list[int]], max_new_tokens: list[int], row_ids: list[int]) -> None:
        heads = [p[:-1] for p in prompts]  # the last prompt token is fed at the row's first step
        cap = max(len(h) + m + 1 for h, m in zip(heads, max_new_tokens))
        filled = [i for i, h in enumerate(heads) if h]
        empty = [i for i, h in enumerate(heads) if not h]
        parts = []
        if filled:
            cache = self.guide.new_cache(len(filled), cap)
            T = max(len(heads[i]) for i in filled)
            right = torch.zeros(len(filled), T, dtype=torch.long, device=self.guide.device)
            for r, i in enumerate(filled):
                right[r, :len(heads[i])] = torch.tensor(heads[i])
            lengths = torch.tensor([len(heads[i]) for i in filled], device=self.guide.device)
            self.guide(right, cache=cache, input_lengths=lengths if int(lengths.min()) < T else None,
                       logits_at=lengths - 1)
            parts.append(cache)
        if empty:
            parts.append(self.guide.new_cache(len(empty), cap))
        joined = parts[0]
        for extra in parts[1:]:
            joined.append_rows(extra)
        order = filled + empty  # row r of `joined` is prompt order[r]; put them back in join order
        if order != sorted(order):
            joined.select_rows(torch.tensor([order.index(i) for i in range(len(order))]))
        if self.cache is None or not self.rows:
            self.cache = joined
        else:
            self.cache.append_rows(joined)
        self.rows.extend(row_ids)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:
        if info.row_ids.tolist() != self.rows:
            raise LmlabError(f"GuideProcessor: rows {info.row_ids.tolist()} do not match the started rows {self.rows}")
        guide_logits = self.guide(ids[:, -1:], cache=self.cache)[:, -1]  # [B, V]
        return logits + self.weight * guide_logits.float().log_softmax(dim=-1)

    def finish(self, row_ids: list[int]) -> None:
        gone = set(row_ids)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        self.rows = [self.rows[i] for i in keep]
        if self.cache is not None and len(keep) != self.cache.batch_size:
            self.cache.select_rows(torch.tensor(keep, dtype=torch.long))
