"""Unlearning a slice of knowledge: the Who's-Harry-Potter recipe (Eldan & Russinovich 2023, "Who's Harry Potter?
Approximate Unlearning in LLMs", arXiv:2310.02238) and a gradient-ascent baseline.

Who's Harry Potter (WHP), three steps:

1. Reinforced model: the baseline fine-tuned further on the forget text (``reinforce_steps``), so it predicts the
   slice's specific tokens even more strongly than the baseline does.
2. Generic labels. Anchored terms (the slice's idiosyncratic names) are replaced by generic counterparts
   (``anchors``: ``{term: generic}``; the paper asks GPT-4 for them, here the caller gives the dictionary), and the
   two signals are combined per position: ``v_generic = v_baseline(translated) - alpha * ReLU(v_reinforced(original)
   - v_baseline(translated))`` (paper eq. 1 with the ReLU of Sec. 3.1, and Sec. 3.3's combination: baseline on
   the translated text, reinforced on the original). The label is ``argmax v_generic``. Positions that predict the
   second or later token of an anchored term get no label (their translated counterpart does not exist).
3. Fine-tune the baseline on the *original* forget text towards the generic labels (``finetune_steps``).

Gradient ascent: maximise the language-modelling loss on the forget text (``steps``, ``lr``), the usual baseline
that WHP is compared against.

Step counts and learning rates default to what moves the 0.9M-parameter reference model (the paper's values --
3 epochs of reinforcement, ~150 steps at lr 1e-6 -- are for Llama2-7b); ``alpha=5`` as in the paper's experiments.
Both return a new model (``copy.deepcopy``); the input model is never changed.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError


def _batch(tok, texts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] (BOS + text, right-padded) and a mask [B, T] of real tokens."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [bos + tok.encode(t) for t in texts]
    T = max(map(len, rows))
    ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.bool, device=device)
    return ids, mask


def _train(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, sign: float = 1.0,
           batch_size: int = 64, seed: int = 0) -> list[float]:
    """Adam on ``sign * CE(model(ids)[:, :-1], labels)`` (labels [B, T-1], -100 = no label); returns the losses."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randperm(ids.shape[0], generator=g)[:batch_size]
        logits = model(ids[idx])[:, :-1].float()  # [b, T-1, vocab]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[idx].reshape(-1), ignore_index=-100)
        opt.zero_grad()
        (sign * loss).backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _lm_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    labels = ids[:, 1:].clone()  # [B, T-1]
    labels[~mask[:, 1:]] = -100
    return labels


@dataclass
class GradientAscentConfig:
    """Gradient ascent on the forget text: ``steps`` Adam steps at ``lr`` (batch of ``batch_size`` texts)."""

    steps: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def gradient_ascent(model: nn.Module, tok, forget_texts: Sequence[str], config: GradientAscentConfig | None = None):
    """A copy of ``model`` trained to *raise* its loss on ``forget_texts``; returns (model, log)."""
    cfg = config or GradientAscentConfig()
    _check_texts(forget_texts)
    out = copy.deepcopy(model)
    ids, mask = _batch(tok, forget_texts, out.device)
    losses = _train(out, ids, _lm_labels(ids, mask), cfg.steps, cfg.lr, sign=-1.0, batch_size=cfg.batch_size,
                    seed=cfg.seed)
    return out, {"method": "gradient_ascent", "forget_loss": losses}


@dataclass
class WhpConfig:
    """Who's-Harry-Potter settings (see the module docstring for where they come from)."""

    alpha: float = 5.0
    reinforce_steps: int = 60
    reinforce_lr: float = 1e-3
    finetune_steps: int = 60
    finetune_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


def _check_texts(texts) -> None:
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise LmlabError("unlearn: forget_texts must be a non-empty list of non-empty strings")


def _anchor_spans(text: str, anchors: dict[str, str]) -> list[tuple[int, int, str]]:
    """(start, end, term) of each anchored term in ``text`` (whole words, longest first)."""
    pattern = "|".join(re.escape(a) for a in sorted(anchors, key=len, reverse=True))
    return [(m.start(), m.end(), m.group(0)) for m in re.finditer(rf"(?<!\w)(?:{pattern})(?!\w)", text)]


def _token_starts(tok, ids: list[int]) -> list[int]:
    """Character offset in the decoded text where each token starts."""
    return [len(tok.decode(ids[:i])) for i in range(len(ids))]


def aligned_pair(tok, text: str, anchors: dict[str, str]) -> tuple[list[int], list[int], list[int]]:
    """(original ids, translated ids, translated position per original label position or -1), each row BOS + text.

    ``where[t]`` is the position in the translated row whose next-token prediction corresponds to the original
    row's prediction at position ``t`` (of token ``t + 1``), matched by character offset with the anchored terms
    replaced; -1 for tokens inside (after the first of) an anchored term and for tokens with no counterpart."""
    spans = _anchor_spans(text, anchors)
    pieces, shift_at, pos, shift = [], [], 0, 0
    for start, end, term in spans:
        pieces += [text[pos:start], anchors[term]]
        shift_at.append((start, end, shift))
        shift += len(anchors[term]) - (end - start)
        pos = end
    translated = "".join(pieces) + text[pos:]
    bos = [tok.bos_id] if tok.bos_id is not None else []
    orig, trans = tok.encode(text), tok.encode(translated)
    o_starts, t_index = _token_starts(tok, orig), {c: i for i, c in enumerate(_token_starts(tok, trans))}

    def mapped(c: int) -> int | None:
        before = 0
        for start, end, sh in shift_at:
            if c == start:
                return start + sh
            if start < c < end:
                return None  # inside an anchored term
            if c >= end:
                before = sh + len(anchors[text[start:end]]) - (end - start)
        return c + before

    where = []
    for c in o_starts:
        m = mapped(c)
        i = t_index.get(m) if m is not None else None
        where.append(-1 if i is None else i + len(bos) - 1)
    if not bos:  # the first token has no prediction without a BOS
        where = where[1:]
    return bos + orig, bos + trans, where


@torch.no_grad()
def generic_labels(baseline: nn.Module, reinforced: nn.Module, tok, texts: Sequence[str], anchors: dict[str, str],
                   alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original ids [B, T], mask [B, T], labels [B, T-1]) with ``labels = argmax v_generic`` (-100: none)."""
    pairs = [aligned_pair(tok, t, anchors) for t in texts]
    T = max(len(o) for o, _, _ in pairs)
    Tt = max(len(t) for _, t, _ in pairs)
    dev = baseline.device
    ids = torch.tensor([o + [0] * (T - len(o)) for o, _, _ in pairs], device=dev)
    tids = torch.tensor([t + [0] * (Tt - len(t)) for _, t, _ in pairs], device=dev)
    mask = torch.tensor([[1] * len(o) + [0] * (T - len(o)) for o, _, _ in pairs], dtype=torch.bool, device=dev)
    v_reinforced = reinforced(ids).float()  # [B, T, vocab] on the original text
    v_base_t = baseline(tids).float()  # [B, Tt, vocab] on the translated text
    labels = torch.full((len(texts), T - 1), -100, dtype=torch.long, device=dev)
    for b, (_, _, where) in enumerate(pairs):
        for t, w in enumerate(where):
            if w < 0:
                continue
            v_b = v_base_t[b, w]
            v_generic = v_b - alpha * F.relu(v_reinforced[b, t] - v_b)  # [vocab]
            labels[b, t] = int(v_generic.argmax())
    return ids, mask, labels


def whp_unlearn(model: nn.Module, tok, forget_texts: Sequence[str], anchors: dict[str, str],
                config: WhpConfig | None = None):
    """The Who's-Harry-Potter recipe on ``forget_texts`` with the ``anchors`` dictionary; returns (model, log)."""
    cfg = config or WhpConfig()
    _check_texts(forget_texts)
    if not anchors or not all(isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip()
                              for k, v in anchors.items()):
        raise LmlabError("unlearn (whp): anchors must be a non-empty {term: generic term} dictionary of strings")
    reinforced = copy.deepcopy(model)
    ids, mask = _batch(tok, forget_texts, model.device)
    r_losses = _train(reinforced, ids, _lm_labels(ids, mask), cfg.reinforce_steps, cfg.reinforce_lr,
                      batch_size=cfg.batch_size, seed=cfg.seed)
    model.eval()
    ids, mask, labels = generic_labels(model, reinforced, tok, forget_texts, anchors, cfg.alpha)
    out = copy.deepcopy(model)
    f_losses = _train(out, ids, labels, cfg.finetune_steps, cfg.finetune_lr, batch_size=cfg.batch_size, seed=cfg.seed)
    changed = float(((labels != -100) & (labels != ids[:, 1:])).sum() / (labels != -100).sum())
    return out, {"method": "whp", "reinforce_loss": r_losses, "finetune_loss": f_losses,
                 "labels_changed": changed, "n_labels": int((labels != -100).sum())}
