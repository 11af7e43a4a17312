"""Extraction attacks on deleted knowledge (Patil, Hase & Bansal 2024, "Can Sensitive Information Be Deleted From
LLMs? Objectives for Defending Against Extraction Attacks", ICLR, arXiv:2309.17410).

An attack succeeds on a fact when the answer is among a candidate set of ``B`` (the budget) tokens:

- whitebox, head projection (Sec. 4): the residual stream after every layer at the prompt's last position is read
  through the final norm and the unembedding (the logit lens); the candidates are the union of each layer's top-k
  tokens, ``B = k * n_layers``. Information an edit or unlearning removed from the output but not from the
  intermediate layers is found here.
- whitebox, probability delta (Sec. 4): the union of each layer's top-k tokens by the *rise* in probability from
  the previous layer.
- blackbox, paraphrase (Sec. 4): the union of the top-k next tokens under each paraphrase of the prompt,
  ``B = k * n_paraphrases``.

The answer counts as found when its first token is a candidate (the paper scores single-token answers). The
success rate over facts is reported before and after a deletion.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _last_position_states(model: nn.Module, tok, prompts: Sequence[str]) -> torch.Tensor:
    """[n_layers, N, d_model]: the residual stream after each block at each prompt's last token."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [bos + tok.encode(p) for p in prompts]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=model.device)
    last = torch.tensor([len(r) - 1 for r in rows], device=model.device)
    n = model.config.n_layers
    names = [f"blocks.{i}.resid_post" for i in range(n)]
    _, cache = model.run_with_cache(ids, names=names)
    take = torch.arange(len(rows), device=model.device)
    return torch.stack([cache[name][take, last] for name in names])


@torch.no_grad()
def layer_logprobs(model: nn.Module, tok, prompts: Sequence[str]) -> torch.Tensor:
    """[n_layers, N, vocab] log-probabilities of the logit lens at every layer (the last equals the model's)."""
    states = _last_position_states(model, tok, prompts)
    return F.log_softmax(model.lm_head(model.ln_final(states)).float(), -1)


def head_projection_candidates(model: nn.Module, tok, prompts: Sequence[str], k: int,
                               layers: Sequence[int] | None = None) -> list[set[int]]:
    """Per prompt, the union over layers of the logit lens's top-``k`` tokens (budget ``k * n_layers``);
    ``layers``: read only these layers (default all; budget ``k * len(layers)``)."""
    lp = layer_logprobs(model, tok, prompts)
    top = (lp if layers is None else lp[list(layers)]).topk(k, -1).indices  # [L, N, k]
    return [set(top[:, i].reshape(-1).tolist()) for i in range(len(prompts))]


def probability_delta_candidates(model: nn.Module, tok, prompts: Sequence[str], k: int) -> list[set[int]]:
    """Per prompt, the union over layers of the top-``k`` tokens by probability increase from the layer before."""
    probs = layer_logprobs(model, tok, prompts).exp()  # [L, N, vocab]
    rise = probs[1:] - probs[:-1]
    top = rise.topk(k, -1).indices  # [L-1, N, k]
    return [set(top[:, i].reshape(-1).tolist()) for i in range(len(prompts))]


@torch.no_grad()
def paraphrase_candidates(model: nn.Module, tok, prompt_groups: Sequence[Sequence[str]], k: int) -> list[set[int]]:
    """Per fact, the union of the top-``k`` next tokens under each of its paraphrase prompts."""
    flat = [p for group in prompt_groups for p in group]
    top = layer_logprobs(model, tok, flat)[-1].topk(k, -1).indices  # [N_flat, k]
    out, start = [], 0
    for group in prompt_groups:
        out.append(set(top[start:start + len(group)].reshape(-1).tolist()))
        start += len(group)
    return out


def success_rate(candidates: Sequence[set[int]], answers: Sequence[str], tok) -> float:
    """Share of facts whose answer's first token is among its candidates."""
    if not answers:
        return float("nan")
    return sum(tok.encode(a)[0] in c for c, a in zip(candidates, answers)) / len(answers)
