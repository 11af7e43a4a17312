"""LANDeRMT (Zhu, Pan, Li & Xiong, 2024, "LANDeRMT: Detecting and Routing Language-Aware Neurons for Selectively
Finetuning LLMs to Machine Translation", arXiv:2409.19523): score every MLP neuron's awareness of each language
from translation data, split the aware neurons into language-general and language-specific ones, fine-tune only
those, and scale the language-specific ones with a learned, input-conditioned gate (routing).

The paper's method section is only partly recoverable from what we could read (abstract and summaries); where it is
vague we chose, and say so here:
  * Neuron = one hidden unit of an MLP (``blocks.{l}.mlp.post``, the input of the down projection); its parameters
    are row i of ``gate_proj``/``up_proj`` (and their biases) and column i of ``down_proj``.
  * Awareness (first-order Taylor importance, as the paper's "awareness" is described: the loss change when the
    neuron is removed): for one translation example, ``|sum_t a_t * dL/da_t|`` (a = the neuron's activation, L =
    the loss on the target tokens), averaged over examples.  A direction X->Y's scores count for both X and Y; a
    language's score is the mean over the directions it takes part in.
  * Aware = the top ``top_fraction`` of a layer's neurons by that score (per layer, per language).  Language-general
    = aware for every language (the intersection); language-specific to X = aware for X but not general.
  * Fine-tuning direction X->Y updates general + specific(X) + specific(Y) neurons only; every other weight is frozen.
  * Routing: the language-specific neurons of X (and Y) are scaled by ``1 + tanh(w_{l,X} . rms_norm(h))`` (h = the
    block's input at that position, w learned per layer and language, initialised at 0 so the routed model starts
    exactly equal to the base); language-general neurons are never scaled.  The gate is "guided by translation
    signals" in that it is trained by the translation loss and conditioned on the direction's languages.
Defaults: ``top_fraction=0.1`` (ours: the paper's value was not recoverable; 10% per layer per language).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError


@dataclass(frozen=True)
class LandermtConfig:
    """``top_fraction``: share of each layer's MLP neurons counted as aware of a language (ours, see module doc)."""

    top_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.top_fraction <= 1.0:
            raise LmlabError(f"LandermtConfig: top_fraction must be in (0, 1], got {self.top_fraction!r}")


def _neuron_names(model) -> list[str]:
    return [f"blocks.{i}.mlp.post" for i in range(model.config.n_layers)]


def awareness_scores(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[n_layers, d_mlp]: mean over examples of |sum over positions of activation * d(loss)/d(activation)|.

    ``batches`` yields (input_ids [B, T], loss_mask [B, T]); loss_mask marks the positions whose NEXT token is a
    target token (the translation), so the loss of each example is the sum of its target tokens' NLL.  Padding
    must be masked out (right padding: the model is causal, so pads never reach a real position).
    """
    names = _neuron_names(model)
    total, count = None, 0
    was_training = model.training
    model.eval()
    try:
        for ids, loss_mask in batches:
            store: dict[str, torch.Tensor] = {}

            def keep(x, name, store=store):
                x.retain_grad()
                store[name] = x

            model.zero_grad(set_to_none=True)
            with model.hooks([(n, keep) for n in names]):
                logits = model(ids)  # [B, T, vocab]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(),
                                                    reduction="none").view(ids.shape[0], -1)  # [B, T-1]
            (nll * loss_mask[:, :-1]).sum().backward()  # d(sum of per-example losses) = per-example gradients
            per_example = torch.stack([(store[n] * store[n].grad).sum(1).abs() for n in names], 1)  # [B, L, d_mlp]
            total = per_example.sum(0) if total is None else total + per_example.sum(0)
            count += ids.shape[0]
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise LmlabError("awareness_scores: no examples given")
    return (total / count).detach()


@dataclass
class LanguageNeurons:
    """Boolean masks [n_layers, d_mlp]: ``general`` and, per language, ``specific[language]`` (disjoint from it)."""

    general: torch.Tensor
    specific: dict[str, torch.Tensor]

    def trainable(self, languages: Sequence[str]) -> torch.Tensor:
        """The neurons a direction between ``languages`` fine-tunes: general + their specific ones."""
        unknown = [x for x in languages if x not in self.specific]
        if unknown:
            raise LmlabError(f"LanguageNeurons: unknown language(s) {unknown}; known: {', '.join(self.specific)}")
        mask = self.general.clone()
        for x in languages:
            mask |= self.specific[x]
        return mask


def classify_neurons(scores: dict[str, torch.Tensor], config: LandermtConfig | None = None) -> LanguageNeurons:
    """Split neurons by per-language awareness ``scores`` ({language: [n_layers, d_mlp]}) (see module doc)."""
    config = config or LandermtConfig()
    if len(scores) < 2:
        raise LmlabError(f"classify_neurons: need scores for at least 2 languages, got {len(scores)}")
    shapes = {tuple(s.shape) for s in scores.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise LmlabError(f"classify_neurons: every score must be [n_layers, d_mlp] of one shape, got {shapes}")
    n_layers, d_mlp = next(iter(shapes))
    k = max(1, round(config.top_fraction * d_mlp))
    aware = {}
    for lang, s in scores.items():
        top = s.topk(k, dim=1).indices  # [n_layers, k]
        aware[lang] = torch.zeros(n_layers, d_mlp, dtype=torch.bool).scatter_(1, top, True)
    general = torch.stack(list(aware.values())).all(0)
    return LanguageNeurons(general, {lang: a & ~general for lang, a in aware.items()})


def neuron_parameter_masks(model, neurons: torch.Tensor) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of its entries that belong to the ``neurons`` [n_layers, d_mlp]}."""
    c = model.config
    if tuple(neurons.shape) != (c.n_layers, c.d_mlp):
        raise LmlabError(f"neuron mask must be [{c.n_layers}, {c.d_mlp}], got {tuple(neurons.shape)}")
    masks = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if len(parts) < 4 or parts[0] != "blocks" or parts[2] != "mlp":
            continue
        rows = neurons[int(parts[1])].to(p.device)  # [d_mlp]
        if parts[3] in ("gate_proj", "up_proj"):
            masks[name] = rows[:, None].expand_as(p) if p.dim() == 2 else rows.clone()
        elif parts[3] == "down_proj" and parts[-1] == "weight":
            masks[name] = rows[None, :].expand_as(p)
    return masks


def freeze_except(model, param_masks: dict[str, torch.Tensor], extra: Iterable[nn.Parameter] = ()) -> list:
    """requires_grad only on the masked parameters (and ``extra``); returns the trainable parameters."""
    keep = set(param_masks)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
        if name in keep:
            params.append(p)
    return params + list(extra)


@torch.no_grad()
def restore_unselected(model, param_masks: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> None:
    """After an optimiser step: put every entry outside the mask back to ``before`` (exactly).  Masking gradients
    is not enough with Adam, whose momentum keeps moving a neuron another direction's step updated."""
    named = dict(model.named_parameters())
    for name, mask in param_masks.items():
        p = named[name]
        p.copy_(torch.where(mask, p, before[name]))


class NeuronRouter(nn.Module):
    """The routing gates: ``weight`` [n_layers, n_languages, d_model], zero-initialised (identity routing)."""

    def __init__(self, neurons: LanguageNeurons, d_model: int):
        super().__init__()
        self.languages = list(neurons.specific)
        self.register_buffer("specific", torch.stack([neurons.specific[x] for x in self.languages], 1).float(),
                             persistent=True)  # [n_layers, n_lang, d_mlp]
        self.weight = nn.Parameter(torch.zeros(self.specific.shape[0], len(self.languages), d_model))

    def _onehot(self, rows: Sequence[Sequence[str]]) -> torch.Tensor:
        out = torch.zeros(len(rows), len(self.languages))
        for r, langs in enumerate(rows):
            for x in langs:
                if x not in self.languages:
                    raise LmlabError(f"NeuronRouter: unknown language {x!r}; known: {', '.join(self.languages)}")
                out[r, self.languages.index(x)] = 1.0
        return out  # [B or 1, n_lang]

    @contextmanager
    def route(self, model, languages: Sequence[str] | Sequence[Sequence[str]]):
        """Install the gates on ``model`` for one forward/generation: ``languages`` = the direction's languages
        for every row (``("base", "lang_a")``), or one such tuple per batch row."""
        rows = [tuple(languages)] if languages and isinstance(languages[0], str) else [tuple(r) for r in languages]
        onehot = self._onehot(rows).to(self.weight.device)
        inputs: dict[int, torch.Tensor] = {}

        def take_input(x, name):
            inputs[int(name.split(".")[1])] = x

        def scale(a, name):
            layer = int(name.split(".")[1])
            h = inputs[layer]  # [B, T, d_model]
            h = h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)
            gates = torch.tanh(torch.einsum("btd,kd->btk", h, self.weight[layer].to(h.dtype)))  # [B, T, n_lang]
            gates = gates * onehot[:, None, :].to(h.dtype)
            return a * (1 + gates @ self.specific[layer].to(a.dtype))  # [B, T, d_mlp]

        n = model.config.n_layers
        pairs = [(f"blocks.{i}.resid_pre", take_input) for i in range(n)] + [(f"blocks.{i}.mlp.post", scale)
                                                                             for i in range(n)]
        with model.hooks(pairs):
            yield
