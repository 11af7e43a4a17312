"""Dynamic tokenization (Feher, Vulić & Minixhofer 2024): run a frozen model on a batch re-tokenized with the
batch's own merges (``batch_merges``), the merged tokens' embeddings predicted on the fly by a small
hypernetwork from their parts' embeddings.

What the paper fixes and what we chose (it does not specify the hypernetwork's architecture; it reuses the
zero-shot tokenizer transfer (ZeTT) hypernetwork, a small transformer over the decomposed token's subword
embeddings that predicts both the input and the output embedding, trained with the LM objective while the LM
stays frozen):
  * ``EmbeddingHypernet``: the parts' input embeddings (concatenated with their output embeddings when the model
    is untied) -> a linear map + learned part positions -> ``n_layers`` pre-norm transformer encoder layers ->
    masked mean -> two zero-initialised heads whose outputs are *added to the mean of the parts' rows*.  So an
    untrained hypernetwork is the "mean of parts" baseline, and training only has to learn the correction.
  * decoders (the paper's prefilling/scoring use): the batch's dynamic vocabulary is the static one plus the
    merged tokens; a position's next-token distribution is a softmax over both (output rows of merged tokens
    from the hypernetwork), so the negative log-likelihood of a merged sequence is a score of the same text and
    ``nats per character`` compares merge budgets directly.
  * training: ``train_hypernet`` minimises that LM loss on merged batches (random budgets), the model frozen.
Tokens that are not merged keep their model rows exactly: with zero merges the logits equal the model's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.adapt.batch_merges import DynamicBatch, batch_merges, special_ids, word_start_ids
from lmlab.errors import LmlabError


@dataclass(frozen=True)
class DynamicTokenizationConfig:
    """Hypernetwork size and training.  ``n_layers`` / ``max_parts`` / learning rate: ours, small for the CPU
    world (the paper's hypernetwork is ZeTT's, trained for far longer); ``word_boundaries``: the paper's setting for
    encoders (merges stay inside words), False merges across words as for its decoder prefilling;
    ``train_budgets``: merge budgets drawn per training batch, so one hypernetwork serves every budget."""

    n_layers: int = 1
    max_parts: int = 8
    steps: int = 200
    batch: int = 16
    lr: float = 1e-3
    word_boundaries: bool = True
    min_frequency: int = 2
    train_budgets: tuple[int, ...] = (8, 16, 32, 64)
    seed: int = 0


class EmbeddingHypernet(nn.Module):
    """Parts' embeddings [N, L, d_model] -> (input embedding [N, d_model], output embedding [N, d_model])."""

    def __init__(self, d_model: int, tied: bool, max_parts: int = 8, n_layers: int = 1):
        super().__init__()
        self.tied, self.max_parts = tied, max_parts
        n_heads = next(h for h in (4, 2, 1) if d_model % h == 0)
        self.inp = nn.Linear(d_model if tied else 2 * d_model, d_model)
        self.part_pos = nn.Parameter(torch.zeros(max_parts, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head_in = nn.Linear(d_model, d_model)
        self.head_out = nn.Linear(d_model, d_model)
        for head in (self.head_in, self.head_out):  # zero-initialised residuals: untrained = mean of parts
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, parts_in: torch.Tensor, parts_out: torch.Tensor, mask: torch.Tensor):
        # parts_in, parts_out: [N, L, d_model]; mask: [N, L] (True = a real part)
        w = mask.unsqueeze(-1).to(parts_in.dtype)  # [N, L, 1]
        mean_in = (parts_in * w).sum(1) / w.sum(1)  # [N, d_model]
        mean_out = (parts_out * w).sum(1) / w.sum(1)  # [N, d_model]
        x = self.inp(parts_in if self.tied else torch.cat([parts_in, parts_out], -1))  # [N, L, d_model]
        x = x + self.part_pos[: x.shape[1]]
        x = self.layers(x, src_key_padding_mask=~mask)  # [N, L, d_model]
        pooled = (x * w).sum(1) / w.sum(1)  # [N, d_model]
        new_in = mean_in + self.head_in(pooled)
        new_out = new_in if self.tied else mean_out + self.head_out(pooled)
        return new_in, new_out


def new_hypernet(model, config: DynamicTokenizationConfig = DynamicTokenizationConfig()) -> EmbeddingHypernet:
    torch.manual_seed(config.seed)
    return EmbeddingHypernet(model.config.d_model, model.config.tie_embeddings, config.max_parts, config.n_layers)


def merged_embeddings(model, hypernet: EmbeddingHypernet, merged: Sequence[tuple[int, ...]]):
    """(input rows [M, d_model], output rows [M, d_model]) of the batch's merged tokens."""
    d = model.config.d_model
    if not merged:
        empty = model.embed.weight.new_zeros(0, d)
        return empty, empty
    L = max(len(u) for u in merged)
    if L > hypernet.max_parts:
        raise LmlabError(f"dynamic tokenization: a merged token has {L} parts, the hypernetwork takes at most "
                         f"{hypernet.max_parts}")
    parts = torch.zeros(len(merged), L, dtype=torch.long)  # [M, L]
    for k, u in enumerate(merged):
        parts[k, : len(u)] = torch.tensor(u)
    mask = torch.arange(L)[None] < torch.tensor([len(u) for u in merged])[:, None]  # [M, L]
    parts, mask = parts.to(model.device), mask.to(model.device)
    return hypernet(model.embed.weight[parts], model.lm_head.weight[parts], mask)


def dynamic_logits(model, hypernet: EmbeddingHypernet, batch: DynamicBatch) -> torch.Tensor:
    """Logits [B, T', vocab + M] of the merged batch: the static vocabulary's columns, then the merged tokens'."""
    V = batch.vocab_size
    if V != model.config.vocab_size:
        raise LmlabError(f"dynamic tokenization: batch vocabulary {V} != the model's {model.config.vocab_size}")
    new_in, new_out = merged_embeddings(model, hypernet, batch.merged)  # [M, d_model] each
    ids = batch.ids.to(model.device)  # [B, T']
    table = torch.cat([model.embed.weight, new_in.to(model.embed.weight.dtype)], 0)  # [V + M, d_model]
    x = table[ids]  # [B, T', d_model]
    mask = batch.attention_mask.to(model.device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T']: as the model counts a masked batch
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)
    h = model(None, residual=x, start_at_layer=0, stop_at_layer=model.config.n_layers, attention_mask=mask,
              positions=positions)  # [B, T', d_model]
    h = model.ln_final(h)
    static = model.lm_head(h)  # [B, T', V]
    extra = h @ new_out.to(h.dtype).T  # [B, T', M]
    if model.lm_head.bias is not None and len(batch.merged):  # a merged token takes its first part's bias
        extra = extra + model.lm_head.bias[torch.tensor([u[0] for u in batch.merged], device=h.device)]
    return torch.cat([static, extra], -1)


def dynamic_nll(model, hypernet: EmbeddingHypernet, batch: DynamicBatch) -> torch.Tensor:
    """[B]: summed next-unit negative log-likelihood of each row (its first unit is the context, not scored)."""
    logits = dynamic_logits(model, hypernet, batch).float()  # [B, T', V + M]
    targets = batch.ids[:, 1:].to(logits.device)  # [B, T'-1]
    nll = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")  # [B, T'-1]
    return (nll * batch.attention_mask[:, 1:].to(nll.device)).sum(1)


def merge_batch(tokenizer, rows: Sequence[Sequence[int]], vocab_size: int, budget: int,
                config: DynamicTokenizationConfig = DynamicTokenizationConfig()) -> DynamicBatch:
    """``batch_merges`` with the tokenizer's word starts and special tokens."""
    return batch_merges(rows, vocab_size, budget, word_starts=word_start_ids(tokenizer),
                        specials=special_ids(tokenizer), word_boundaries=config.word_boundaries,
                        min_frequency=config.min_frequency, max_parts=config.max_parts)


def train_hypernet(model, tokenizer, rows: Sequence[Sequence[int]], config: DynamicTokenizationConfig = DynamicTokenizationConfig(),
                   hypernet: EmbeddingHypernet | None = None, log: Callable[[str], None] | None = print) -> EmbeddingHypernet:
    """Train the hypernetwork with the LM loss (mean nats per merged unit) on batches of ``rows`` merged with a
    random budget from ``config.train_budgets``; ``model`` is frozen (its parameters get no gradient)."""
    if len(rows) < 2:
        raise LmlabError("train_hypernet: needs at least 2 rows of token ids")
    hypernet = hypernet or new_hypernet(model, config)
    hypernet.to(model.device).train()
    was_training, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    rng = random.Random(config.seed)
    opt = torch.optim.AdamW(hypernet.parameters(), lr=config.lr, weight_decay=0.0)
    try:
        for step in range(config.steps):
            picked = [rows[i] for i in rng.sample(range(len(rows)), min(config.batch, len(rows)))]
            batch = merge_batch(tokenizer, picked, model.config.vocab_size, rng.choice(config.train_budgets), config)
            loss = dynamic_nll(model, hypernet, batch).sum() / (batch.n_units - len(picked))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log and (step + 1) % max(1, config.steps // 5) == 0:
                log(f"  hypernet step {step + 1}/{config.steps}: {loss.item():.3f} nats/unit, "
                    f"{len(batch.merged)} merged tokens")
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return hypernet.eval()
