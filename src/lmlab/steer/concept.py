"""Concept directions by PCA over contrasting activations (Schramowski et al. 2022, "Large pre-trained
language models contain human-like biases of what is right and wrong to do", the "moral direction").

The paper embeds sentences (mean-pooled token representations) and takes the first principal component as
the concept axis; a text's score is its projection on that axis. Here the representation is the mean over
tokens of ``blocks.{layer}.resid_pre``, and the component is taken over *paired differences*
(positive_i - negative_i), uncentred, so the axis is the dominant direction that separates each pair (centring
would remove the shared shift that is the concept itself). The sign is oriented so positive texts score higher.

The direction also steers: :meth:`ConceptDirection.steering_vector` returns a [d_model] SteeringVector scaled
to the mean projected gap between the pairs, so coefficient 1 moves a representation by one typical contrast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlab.errors import LmlabError
from lmlab.steer.actadd import layer_hook
from lmlab.steer.vector import SteeringVector, model_fingerprint


@torch.no_grad()
def mean_activations(model, tokenizer, texts: Sequence[str], hook: str) -> torch.Tensor:
    """[N, d_model]: each text's activation at ``hook``, averaged over its tokens (one ragged batch)."""
    encoded = [tokenizer.encode(t) for t in texts]
    for t, ids in zip(texts, encoded):
        if not ids:
            raise LmlabError(f"concept_direction: text {t!r} encodes to no tokens")
    T = max(len(e) for e in encoded)
    ids = torch.zeros(len(encoded), T, dtype=torch.long, device=model.device)
    lengths = torch.tensor([len(e) for e in encoded], device=model.device)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = torch.tensor(e)
    mask = (torch.arange(T, device=model.device)[None] < lengths[:, None]).float()  # [N, T]
    # right padding + causal attention: real tokens never see the pads, so no attention mask is needed
    _, acts = model.run_with_cache(ids, names=[hook])
    x = acts[hook].float()  # [N, T, d]
    return (x * mask[..., None]).sum(1) / lengths[:, None].float()


@dataclass
class ConceptDirection:
    """A unit direction [d_model] at ``hook``; ``scale`` is the mean projected gap of the training pairs."""

    direction: torch.Tensor
    hook: str
    fingerprint: str
    scale: float
    explained: float  # share of the differences' (uncentred) variance on the first component

    def score(self, model, tokenizer, texts: Sequence[str]) -> torch.Tensor:
        """[N] projection of each text's mean activation on the direction (higher = more positive)."""
        if model_fingerprint(model) != self.fingerprint:
            raise LmlabError("ConceptDirection.score: this direction was read from another model")
        return mean_activations(model, tokenizer, texts, self.hook) @ self.direction

    def steering_vector(self) -> SteeringVector:
        return SteeringVector(self.direction * self.scale, self.hook, self.fingerprint,
                              meta={"method": "concept_direction", "explained": self.explained})


def concept_direction(model, tokenizer, positive_texts: Sequence[str], negative_texts: Sequence[str],
                      layer: int, site: str = "resid_pre") -> ConceptDirection:
    """First principal component of paired differences, oriented towards ``positive_texts``."""
    if len(positive_texts) != len(negative_texts) or not positive_texts:
        raise LmlabError(f"concept_direction: need as many positive as negative texts (>= 1), got "
                         f"{len(positive_texts)} and {len(negative_texts)}")
    hook = layer_hook(model, layer, site)
    pos = mean_activations(model, tokenizer, positive_texts, hook)  # [N, d]
    neg = mean_activations(model, tokenizer, negative_texts, hook)
    diff = pos - neg  # [N, d]
    _, s, vh = torch.linalg.svd(diff, full_matrices=False)
    direction = vh[0]
    gaps = diff @ direction  # [N]
    if gaps.mean() < 0:
        direction, gaps = -direction, -gaps
    explained = float(s[0] ** 2 / (s ** 2).sum().clamp_min(1e-30))
    return ConceptDirection(direction, hook, model_fingerprint(model), float(gaps.mean()), explained)
