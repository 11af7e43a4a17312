"""Per-row sampling: the warpers (pure functions of logits [B, V]) and the per-row decision of the next token.

Order of operations follows transformers: repetition penalty, logits processors, then temperature, top-k,
top-p and min-p, then greedy argmax (temperature 0) or one ``torch.multinomial`` per seeded row with that
row's own ``torch.Generator``, so a seeded request draws the same tokens whatever else shares its batch.

Rows with identical settings form a *group*; every warper runs once per group with the settings as Python
scalars (the arithmetic of a batch of one equals that of the whole batch), so the per-step Python work grows
with the number of distinct settings, not with the batch size. Groups are rebuilt only when rows join or
leave (:class:`RowSampler`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class SamplingParams:
    """One row's decoding settings (defaults: greedy). Hashable: rows with equal params share a group."""

    temperature: float = 0.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None  # nucleus sampling (Holtzman et al., 2020)
    min_p: float | None = None  # min-p sampling (Nguyen et al., 2024)
    repetition_penalty: float = 1.0  # CTRL (Keskar et al., 2019): divide positive logits, multiply negative

    def validate(self) -> None:
        if self.temperature < 0:
            raise LmlabError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise LmlabError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise LmlabError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise LmlabError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise LmlabError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


# --- warpers: pure functions of logits [B, V] ------------------------------------------------------------

def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set of tokens whose mass reaches p."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= 1 - p
    remove_sorted[..., -1] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """min-p (Nguyen et al., 2024): drop tokens whose probability is below min_p times the top one."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``seen`` [B, V] bool marks tokens present in each row's prompt or output."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def warp(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p for rows that sample (temperature > 0): logits [G, V] -> [G, V]."""
    logits = logits / p.temperature
    if p.top_k is not None:
        logits = apply_top_k(logits, p.top_k)
    if p.top_p is not None and p.top_p < 1:
        logits = apply_top_p(logits, p.top_p)
    if p.min_p is not None and p.min_p > 0:
        logits = apply_min_p(logits, p.min_p)
    return logits


# --- per-row decisions -----------------------------------------------------------------------------------

class _Group:
    """Rows sharing one SamplingParams: their indices in the batch and their generators."""

    def __init__(self, params: SamplingParams, index: list[int], generators: list[torch.Generator | None],
                 whole_batch: bool, device: torch.device) -> None:
        self.params = params
        self.index = None if whole_batch else torch.tensor(index, dtype=torch.long, device=device)  # [G]
        self.seeded = [(i, g) for i, g in enumerate(generators) if g is not None]  # local index, generator
        unseeded = [i for i, g in enumerate(generators) if g is None]
        self.all_unseeded = len(unseeded) == len(generators)
        self.unseeded = torch.tensor(unseeded, dtype=torch.long, device=device)  # [G_u] local indices


class RowSampler:
    """Chooses the next token of every active row; rebuilt (cheaply) whenever rows join or leave."""

    def __init__(self, params: list[SamplingParams], generators: list[torch.Generator | None],
                 device: torch.device) -> None:
        order: dict[SamplingParams, list[int]] = {}
        for i, p in enumerate(params):
            order.setdefault(p, []).append(i)
        whole = len(order) == 1
        self.groups = [_Group(p, idx, [generators[i] for i in idx], whole, device) for p, idx in order.items()]
        self.penalised = [g for g in self.groups if g.params.repetition_penalty != 1.0]
        self.needs_seen = bool(self.penalised)

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """The repetition penalty of each group: logits [B, V] fp32 -> [B, V]."""
        for g in self.penalised:
            if g.index is None:
                logits = apply_repetition_penalty(logits, seen, g.params.repetition_penalty)
            else:
                rows = apply_repetition_penalty(logits[g.index], seen[g.index], g.params.repetition_penalty)
                logits = logits.index_put((g.index,), rows)  # out of place: the caller's logits stay intact
        return logits

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed logits [B, V] fp32 -> token ids [B]."""
        if len(self.groups) == 1:
            return self._choose_group(logits, self.groups[0])
        tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        for g in self.groups:
            tokens[g.index] = self._choose_group(logits[g.index], g)
        return tokens

    @staticmethod
    def _choose_group(logits: torch.Tensor, g: _Group) -> torch.Tensor:
        if g.params.temperature == 0:
            return logits.argmax(dim=-1)
        probs = warp(logits, g.params).softmax(dim=-1)  # [G, V]
        if g.all_unseeded:
            return torch.multinomial(probs, 1).squeeze(-1)
        tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
        for i, gen in g.seeded:  # one draw per seeded row from its own generator: batch-independent
            tokens[i] = torch.multinomial(probs[i:i + 1], 1, generator=gen)[0, 0]
        if len(g.unseeded):
            tokens[g.unseeded] = torch.multinomial(probs[g.unseeded], 1).squeeze(-1)
        return tokens
