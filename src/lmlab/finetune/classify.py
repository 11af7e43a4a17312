"""Label-supervised fine-tuning of a decoder (LS-LLaMA / LS-unLLaMA; Li et al. 2023, "Label Supervised
LLaMA Finetuning", arXiv:2310.01208).

A linear head maps the final hidden state (after the final norm) to label logits, trained with cross-entropy
(``n_labels=1``: a scalar score, trained by regression or by a reward model's pairwise loss), usually with LoRA on
the decoder (``lmlab.peft``). Sequence classification pools the last non-padding token (the abstract does not fix
the pooling; the last token is what a causal decoder has seen everything at, and HF's
``*ForSequenceClassification`` does the same). ``token_level=True`` gives one label per token (NER).
``bidirectional=True`` removes the causal mask (LS-unLLaMA): during the classifier's forward only, a pre-hook on
each block hands it a mask context that hides padding but not the future (the Transformer's own forward, positions
and rotary tables are used unchanged; the hooks are removed after).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.train.objectives import IGNORE_INDEX


@dataclass
class ClassifierConfig:
    """``n_labels`` (1: a scalar score, e.g. a reward model's); ``bidirectional``: LS-unLLaMA (no causal mask);
    ``token_level``: per-token labels."""

    n_labels: int = 2
    bidirectional: bool = False
    token_level: bool = False


class _NonCausal:
    """Wraps the decoder's mask context: every query sees every non-padding key of its row (and itself,
    so padded rows stay finite); everything else is delegated."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self._mask = None

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def plain_mask(self, window):
        if self._mask is None:
            ctx = self._ctx
            B, T = ctx.positions.shape
            eye = torch.eye(T, dtype=torch.bool, device=ctx.positions.device)[None, None]
            if ctx.pad_mask is None:
                self._mask = torch.ones(B, 1, T, T, dtype=torch.bool, device=ctx.positions.device)
            else:
                self._mask = ctx.pad_mask[:, None, None, :].bool().expand(B, 1, T, T) | eye
        return self._mask


class SequenceClassifier(nn.Module):
    """``SequenceClassifier(model, ClassifierConfig(n_labels=3))(input_ids, attention_mask) -> [B, n_labels]``
    (``[B, T, n_labels]`` when token_level)."""

    def __init__(self, model: nn.Module, config: ClassifierConfig) -> None:
        super().__init__()
        if isinstance(config.n_labels, bool) or not isinstance(config.n_labels, int) or config.n_labels < 1:
            raise LmlabError(f"classifier: n_labels must be an integer >= 1 (1: a scalar head, as a reward model "
                             f"uses), got {config.n_labels!r}")
        self.model, self.config = model, config
        self.score = nn.Linear(model.config.d_model, config.n_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, T, d_model] (the ``ln_final`` hook point of the decoder's own forward)."""
        m = self.model
        handles = []
        if self.config.bidirectional:  # swap each block's mask context for a non-causal one, for this call only
            def pre_hook(module, args):
                x, rope, ctx = args
                return x, rope, _NonCausal(ctx)
            handles = [b.register_forward_pre_hook(pre_hook) for b in m.blocks]
        try:
            # the residual stream after the last block (no lm_head), then the final norm and its hook point:
            # gradients flow into the decoder and any adapter (run_with_cache would detach them)
            x = m(input_ids, attention_mask=attention_mask, stop_at_layer=m.config.n_layers)  # [B, T, d_model]
        finally:
            for h in handles:
                h.remove()
        return m.hook_points["ln_final"](m.ln_final(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_states(input_ids, attention_mask)  # [B, T, d]
        if self.config.token_level:
            return self.score(h)
        B, T = input_ids.shape
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=h.device)
        else:  # index of the last real token (works for left and right padding)
            last = (attention_mask.long() * torch.arange(1, T + 1, device=h.device)).argmax(-1)
        return self.score(h[torch.arange(B, device=h.device), last])  # [B, n_labels]


class ClassificationObjective:
    """Cross-entropy of ``model(input_ids, attention_mask)`` against ``labels`` ([B], or [B, T] with -100).
    A single-output head (``n_labels=1``) is a regression: mean squared error against float ``labels``, as
    HF's ``*ForSequenceClassification`` does with ``num_labels=1``. Registered as ``classify``
    (``lmlab.train.objective_registry``)."""

    def loss_units(self, batch: Any) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())  # the labels the loss averages over

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        logits = model(batch["input_ids"], batch.get("attention_mask"))
        labels = batch["labels"]
        if logits.shape[-1] == 1:
            scores = logits[..., 0].float()
            target = labels.to(scores.dtype)
            keep = target != IGNORE_INDEX
            loss = F.mse_loss(scores[keep], target[keep])
            return loss, {"mse": loss.detach()}
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        keep = labels != IGNORE_INDEX
        acc = (logits.argmax(-1)[keep] == labels[keep]).float().mean()
        return loss, {"accuracy": acc.detach()}
