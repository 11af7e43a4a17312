"""Differentiable per-sequence log-probabilities: ``sequence_logprobs(model, ids, prompt_lengths=...) -> [B]``.

Why a function of its own: DPO, SPIN, reward modelling and SFT scoring all need ``log p(completion | prompt)``
with gradients, for a batch of chosen and rejected rows in one forward. Scoring only the completion means the
``lm_head`` (``d_model x vocab`` per position, the largest matmul of a small model) is needed
only at the positions that predict a completion token, so the model is run to its final residual stream
(``stop_at_layer=n_layers``) and ``ln_final`` + ``lm_head`` are applied to those positions alone.

Conventions: token ``t`` of a row is predicted by position ``t - 1``; token 0 has no prediction and is never
scored. Which tokens are scored is given by ONE of

- ``prompt_lengths`` [B]: tokens at indices ``>= prompt_lengths[b]`` are scored (the index of the first
  completion token in the row as given, so with left padding it counts the padding too);
- ``loss_mask`` [B, T] (bool / 0-1): exactly the marked tokens are scored;
- neither: every token from index 1 on.

Padding is excluded by ``lengths`` [B] (right padding: tokens at indices ``>= lengths[b]`` are padding) or by
``attention_mask`` [B, T] (0 = padding, left or right; it is also passed to the model so that positions and
masks follow it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError

REDUCTIONS = ("sum", "mean")


def _as_row_vector(value, B: int, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, device=device)
    if t.dim() != 1 or t.shape[0] != B or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise LmlabError(f"sequence_logprobs: {name} must be an integer tensor of shape [{B}], got "
                         f"{tuple(t.shape)} {t.dtype}")
    return t.long()


def _as_row_mask(value, shape: tuple[int, int], name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, device=device)
    if tuple(t.shape) != shape:
        raise LmlabError(f"sequence_logprobs: {name} must have shape {list(shape)} like input_ids, got {list(t.shape)}")
    if t.dtype.is_floating_point and not bool(((t == 0) | (t == 1)).all()):
        raise LmlabError(f"sequence_logprobs: {name} must hold only 0 and 1")
    return t.bool()


def scored_token_mask(input_ids: torch.Tensor, *, prompt_lengths=None, loss_mask=None, attention_mask=None,
                      lengths=None) -> torch.Tensor:
    """[B, T] bool: the tokens whose log-probabilities are scored (see the module docstring)."""
    if input_ids.dim() != 2:
        raise LmlabError(f"sequence_logprobs: input_ids must have shape [batch, seq], got {list(input_ids.shape)}")
    B, T = input_ids.shape
    dev = input_ids.device
    if prompt_lengths is not None and loss_mask is not None:
        raise LmlabError("sequence_logprobs: give prompt_lengths or loss_mask, not both")
    if attention_mask is not None and lengths is not None:
        raise LmlabError("sequence_logprobs: give attention_mask or lengths, not both")
    idx = torch.arange(T, device=dev)[None, :]  # [1, T]
    if loss_mask is not None:
        scored = _as_row_mask(loss_mask, (B, T), "loss_mask", dev)
        if bool(scored[:, 0].any()):
            raise LmlabError("sequence_logprobs: loss_mask marks token 0, which no position predicts")
    elif prompt_lengths is not None:
        p = _as_row_vector(prompt_lengths, B, "prompt_lengths", dev)
        if bool((p < 1).any()) or bool((p > T).any()):
            raise LmlabError(f"sequence_logprobs: prompt_lengths must lie in [1, {T}] (token 0 is never scored), "
                             f"got {p.tolist()}")
        scored = idx >= p[:, None]
    else:
        scored = (idx >= 1).expand(B, T)
    if lengths is not None:
        n = _as_row_vector(lengths, B, "lengths", dev)
        if bool((n < 1).any()) or bool((n > T).any()):
            raise LmlabError(f"sequence_logprobs: lengths must lie in [1, {T}], got {n.tolist()}")
        scored = scored & (idx < n[:, None])
    if attention_mask is not None:
        scored = scored & _as_row_mask(attention_mask, (B, T), "attention_mask", dev)
    return scored


def token_logprobs(model: nn.Module, input_ids: torch.Tensor, *, prompt_lengths=None, loss_mask=None,
                   attention_mask=None, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logp [B, T] fp32, scored [B, T] bool)``: ``logp[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` at
    scored tokens and 0 elsewhere. Differentiable; one forward; the lm_head runs only where needed."""
    scored = scored_token_mask(input_ids, prompt_lengths=prompt_lengths, loss_mask=loss_mask,
                               attention_mask=attention_mask, lengths=lengths)
    mask = None if attention_mask is None else torch.as_tensor(attention_mask, device=input_ids.device).long()
    points = getattr(model, "hook_points", {})
    hooked = any(points[n].active for n in ("ln_final", "logits") if n in points)
    if hooked:  # hooks on ln_final / logits must see the whole sequence, as in a plain forward
        predict = scored[:, 1:]
        logits = model(input_ids, attention_mask=mask)[:, :-1][predict]  # [N, vocab]
        return _scatter_picked(logits, input_ids, predict), scored
    residual = model(input_ids, attention_mask=mask, stop_at_layer=model.config.n_layers)  # [B, T, d_model]
    logp = logprobs_from_residual(model, residual, input_ids, scored)
    return logp, scored


def logprobs_from_residual(model: nn.Module, residual: torch.Tensor, input_ids: torch.Tensor,
                           scored: torch.Tensor) -> torch.Tensor:
    """``logp`` [B, T] from the final residual stream [B, T, d_model] (``forward(stop_at_layer=n_layers)``): the
    final norm and lm_head run only at the positions predicting a scored token. For callers that need the
    residual stream for something else too (a reward head, HaF-RM) and so run the decoder once."""
    predict = scored[:, 1:]  # [B, T-1]: position t predicts token t+1
    logits = model.lm_head(model.ln_final(residual[:, :-1][predict]))  # [N, vocab]
    return _scatter_picked(logits, input_ids, predict)


def _scatter_picked(logits: torch.Tensor, input_ids: torch.Tensor, predict: torch.Tensor) -> torch.Tensor:
    """The log-softmax of each target token, put back at its position: [B, T] fp32, 0 where not scored."""
    B, T = input_ids.shape
    targets = input_ids[:, 1:][predict]  # [N]
    picked = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]  # [N]
    rows, cols = predict.nonzero(as_tuple=True)  # [N] each, in the same (row-major) order as the [predict] picks
    logp = torch.zeros(B, T, dtype=torch.float32, device=picked.device)
    return logp.index_put((rows, cols + 1), picked)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, *, prompt_lengths=None, loss_mask=None,
                      attention_mask=None, lengths=None, reduction: str = "sum") -> torch.Tensor:
    """Log-probability of each row's scored tokens, [B] fp32, differentiable.

    ``reduction="sum"``: ``log p(completion | prompt)`` (DPO); ``"mean"``: the average over the row's scored
    tokens (length-normalised, as SimPO and IPO-style scoring use). A row with no scored token is an error.
    """
    if reduction not in REDUCTIONS:
        raise LmlabError(f"sequence_logprobs: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    logp, scored = token_logprobs(model, input_ids, prompt_lengths=prompt_lengths, loss_mask=loss_mask,
                                  attention_mask=attention_mask, lengths=lengths)
    counts = scored.sum(-1)  # [B]
    empty = (counts == 0).nonzero(as_tuple=True)[0].tolist()
    if empty:
        raise LmlabError(f"sequence_logprobs: row(s) {empty} have no scored token (empty completion?)")
    total = logp.sum(-1)  # [B]
    return total if reduction == "sum" else total / counts.to(total.dtype)
