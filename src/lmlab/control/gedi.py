"""GeDi: generative-discriminator guided decoding (Krause et al. 2021, "GeDi: Generative Discriminator
Guided Sequence Generation", arXiv:2009.06367).

A class-conditional LM (the guide, possibly much smaller than the base) is run on the prompt prefixed with the
desired control code and, as a second row, with the anti control code, each with its own KV cache. For every
candidate next token x_t the class posterior follows from Bayes' rule with a uniform class prior and
*length-normalised* log-likelihoods (the paper's eq. 5, with its 1/t exponent):

    s_c(x_t) = (sum_{j<t} log P(x_j | c, x_<j) + log P(x_t | c, x_<t)) / t        t = tokens scored so far + 1
    P(c | x_1..t) = softmax_c s_c(x_t)

and the base distribution is reweighted (eq. 6): log P_w(x_t) = log P_LM(x_t | x_<t) + omega log P(c | x_1..t).
Filtering heuristic (as the official implementation applies it): tokens are sorted by class posterior,
ascending; a token is removed when the cumulative P_w mass of the tokens up to and including it (from the least
desired) is below ``filter_p`` (rho) and its posterior is below ``target_p`` (tau). So the most desired tokens
carrying the top 1 - rho of the mass survive, plus any token whose posterior clears tau.

Defaults are the paper's / official code's: omega = 30 (``disc_weight``), rho = ``filter_p`` = 0.8,
tau = ``target_p`` = 0.8, no class bias. omega = 0 turns the guidance off (no reweighting and no filtering),
reproducing the base tokens exactly. The guide must share the base model's tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.control.finite import check_finite
from lmlab.core.processors import StatefulProcessor, StepInfo
from lmlab.errors import LmlabError


@dataclass(frozen=True)
class GeDiConfig:
    """omega: disc_weight (paper 30); filter_p: rho (0.8); target_p: tau (0.8); class_bias: added to the
    desired class's length-normalised score (official default 0 for sentiment and topic)."""

    omega: float = 30.0
    filter_p: float = 0.8
    target_p: float = 0.8
    class_bias: float = 0.0

    def validate(self) -> None:
        if not (math.isfinite(self.omega) and self.omega >= 0):
            raise LmlabError(f"GeDi: omega must be finite and >= 0, got {self.omega}")
        for name in ("filter_p", "target_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise LmlabError(f"GeDi: {name} must be in [0, 1], got {v}")


class GeDi(StatefulProcessor):
    """Stateful processor owning the guide and its cache (2 rows per base row: desired, anti)."""

    def __init__(self, guide, desired_code: list[int], anti_code: list[int], config: GeDiConfig = GeDiConfig(),
                 base=None) -> None:
        config.validate()
        if not desired_code or not anti_code:
            raise LmlabError("GeDi: desired_code and anti_code must each be at least one token id")
        V = guide.config.vocab_size
        if base is not None and base.config.vocab_size != V:
            raise LmlabError(f"GeDi: the guide's vocabulary ({V}) differs from the base model's "
                             f"({base.config.vocab_size}); guide and base must share one tokenizer")
        bad = [t for t in list(desired_code) + list(anti_code) if not 0 <= t < V]
        if bad:
            raise LmlabError(f"GeDi: control code token ids {bad} are outside the guide's vocabulary [0, {V})")
        self.guide, self.cfg = guide, config
        self.codes = (list(desired_code), list(anti_code))
        self.cache = None  # rows 2i (desired) and 2i+1 (anti) belong to base row i
        self.rows: list[int] = []
        self.sums = torch.zeros(0, 2)  # [B, 2] log-likelihood of the scored tokens under each code
        self.counts = torch.zeros(0)  # [B] tokens scored
        self.last = torch.zeros(0, 2, V)  # [B, 2, V] last step's log-probs, to score the token then chosen
        self.pending = torch.zeros(0, dtype=torch.bool)  # [B] whether `last` awaits the chosen token

    @torch.no_grad()
    def start(self, prompts, max_new_tokens, row_ids) -> None:
        g, V = self.guide, self.guide.config.vocab_size
        # one ragged, right-padded prefill of 2 rows per prompt: [code, x_1 .. x_{n-1}] predicts x_1 .. x_n
        heads = [code + list(prompt[:-1]) for prompt in prompts for code in self.codes]
        caps = [len(h) + m + 1 for h, m in zip(heads, [m for m in max_new_tokens for _ in range(2)])]
        T = max(len(h) for h in heads)
        right = torch.zeros(len(heads), T, dtype=torch.long, device=g.device)
        for r, h in enumerate(heads):
            right[r, :len(h)] = torch.tensor(h)
        lengths = torch.tensor([len(h) for h in heads], device=g.device)
        joined = g.new_cache(len(heads), max(caps))
        logp = g(right, cache=joined, input_lengths=lengths if int(lengths.min()) < T else None)
        logp = logp.float().log_softmax(-1)  # [2n, T, V]
        sums = []
        for r, prompt in enumerate(p for p in prompts for _ in range(2)):
            start = len(self.codes[r % 2]) - 1
            scored = logp[r, start:start + len(prompt)]  # [n_r, V] rows predicting x_1 .. x_n
            target = torch.tensor(prompt, device=scored.device)
            sums.append(float(scored.gather(1, target[:, None]).sum()))
        if self.cache is None or not self.rows:
            self.cache = joined
        else:
            self.cache.append_rows(joined)
        n = len(prompts)
        self.rows.extend(row_ids)
        self.sums = torch.cat([self.sums, torch.tensor(sums).view(n, 2)])
        self.counts = torch.cat([self.counts, torch.tensor([float(len(p)) for p in prompts])])
        self.last = torch.cat([self.last, torch.zeros(n, 2, V)])
        self.pending = torch.cat([self.pending, torch.zeros(n, dtype=torch.bool)])

    def posterior(self, logp: torch.Tensor) -> torch.Tensor:
        """[B, V] log P(desired | x_1..t) for every candidate, from guide log-probs ``logp`` [B, 2, V].

        With two classes the softmax over classes is a sigmoid of the score difference, so one [B, V]
        difference replaces the [B, 2, V] normalise-and-log-softmax (same value, half the full-vocabulary ops)."""
        diff = (self.sums[:, 0:1] - self.sums[:, 1:2] + logp[:, 0] - logp[:, 1]) / (self.counts[:, None] + 1.0)
        if self.cfg.class_bias:
            diff = diff + self.cfg.class_bias
        return torch.nn.functional.logsigmoid(diff)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        if info.row_ids.tolist() != self.rows:
            raise LmlabError(f"GeDi: rows {info.row_ids.tolist()} do not match the started rows {self.rows}")
        if logits.shape[-1] != self.last.shape[-1]:
            raise LmlabError(f"GeDi: base vocabulary {logits.shape[-1]} differs from the guide's "
                             f"{self.last.shape[-1]} (guide and base must share one tokenizer)")
        newest = ids[:, -1].cpu()  # [B] the token each row chose at the previous step (or its last prompt token)
        if bool(self.pending.any()):
            chosen = self.last.gather(2, newest[:, None, None].expand(-1, 2, 1))[:, :, 0]  # [B, 2]
            self.sums = self.sums + chosen * self.pending[:, None]
            self.counts = self.counts + self.pending.float()
        feed = newest.repeat_interleave(2)[:, None].to(self.guide.device)  # [2B, 1]
        logp = self.guide(feed, cache=self.cache)[:, -1].float().log_softmax(-1).cpu()  # [2B, V]
        B = len(self.rows)
        self.last = logp.view(B, 2, -1)
        self.pending = torch.ones(B, dtype=torch.bool)
        if self.cfg.omega == 0:
            return logits
        post = self.posterior(self.last).to(logits.device)  # [B, V]
        weighted = logits.float().log_softmax(-1) + self.cfg.omega * post  # [B, V]
        check_finite("GeDi", f"omega {self.cfg.omega}", logits, weighted)
        return filter_tokens(weighted, post, self.cfg.filter_p, self.cfg.target_p)

    def finish(self, row_ids) -> None:
        gone = set(row_ids)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.long)
        self.sums, self.counts, self.last, self.pending = (self.sums[idx], self.counts[idx], self.last[idx],
                                                           self.pending[idx])
        if keep:
            self.cache.select_rows(torch.stack([2 * idx, 2 * idx + 1], dim=1).reshape(-1))
        else:
            self.cache = None


def _ascending_order(x: torch.Tensor) -> torch.Tensor:
    """argsort along the last dim; on CPU through numpy, whose introsort is ~3x faster than torch's sort here
    (profile, session 5: 0.84 vs 2.8 ms for [4, 8192] on one thread)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        import numpy as np

        return torch.from_numpy(np.argsort(x.detach().contiguous().numpy(), axis=-1))
    return x.argsort(dim=-1)


FAST_K = 64  # candidates the filter examines before falling back to a full-vocabulary sort


def filter_tokens(weighted: torch.Tensor, post: torch.Tensor, filter_p: float, target_p: float) -> torch.Tensor:
    """GeDi's heuristic: drop the least-desired tokens whose cumulative P_w mass stays below ``filter_p``
    unless their class posterior reaches ``target_p``. ``weighted`` and ``post`` [B, V] (log-space).

    Why not just sort: a full-vocabulary sort costs more than the rest of the step. The cumulative mass of a
    token counted from the least desired one is the total minus the mass of the tokens more desired than it, so
    only the ``FAST_K`` most desired tokens need ordering when they already carry more than 1 - ``filter_p``
    of the mass (every other token then has cumulative mass below ``filter_p``: dropped unless its posterior
    reaches ``target_p``). Otherwise (a flat distribution) the full sort is used."""
    if filter_p <= 0.0 or target_p <= 0.0:
        return weighted  # nothing can be dropped
    probs = weighted.softmax(-1)  # [B, V]
    log_tau = math.log(target_p)
    V = post.shape[-1]
    if V > FAST_K:
        top_post, top_idx = post.topk(FAST_K, dim=-1)  # [B, K] most desired first
        top_p = probs.gather(1, top_idx)  # [B, K]
        total = probs.sum(-1, keepdim=True)  # [B, 1]
        if bool((total[:, 0] - top_p.sum(-1) < filter_p).all()):
            from_least = total - (top_p.cumsum(-1) - top_p)  # [B, K] cumulative mass from the least desired
            drop_top = (from_least < filter_p) & (top_post < log_tau)
            drop = (post < log_tau).scatter_(1, top_idx, drop_top)
            return weighted.masked_fill(drop, float("-inf"))
    order = _ascending_order(post)  # [B, V]
    sorted_post = post.gather(1, order)
    cumulative = probs.gather(1, order).cumsum(-1)  # [B, V]
    drop_sorted = (cumulative < filter_p) & (sorted_post < log_tau)
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return weighted.masked_fill(drop, float("-inf"))
