"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al. 2023, arXiv:2210.07229).

All requests are written at once into several consecutive MLP down projections (the critical layers ``R``):

1. For each request a target ``z_i = h_i^L + delta_i`` of the residual stream after the last critical layer
   ``L`` at the subject's last token (``blocks.{L}.resid_post``), ``delta_i`` optimised as in ROME (paper
   eq. 16-17, :func:`lmlab.edit.locate.optimise_targets`, all requests in one batch).
2. For each layer ``l`` of ``R`` in order, on the model as edited so far (Alg. 1): keys ``K`` [d_mlp, n]
   (averaged over context templates), residuals ``R = z - h^L`` [d_model, n] spread over the remaining
   layers (``R / (|R| - i)``), and the batch least-squares update (eq. 14)

       Delta = R K^T (lambda C + K K^T)^-1

   with ``C = E[k k^T]`` and ``lambda = mom2_update_weight``.

The batch update differs from a loop of single edits (the ``K K^T`` term couples the requests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.edit.config import LocateEditConfig, by_fraction, check_layers
from lmlab.edit.locate import activations_at_subject, context_templates, mean_keys, optimise_targets
from lmlab.edit.registry import register_editor


def memit_update(C: torch.Tensor, K: torch.Tensor, resid: torch.Tensor, lam: float) -> torch.Tensor:
    """``resid K^T (lam C + K K^T)^-1``: [d_model, d_mlp] fp64. ``K`` [d_mlp, n], ``resid`` [d_model, n]."""
    K, resid = K.double(), resid.double()
    adj = torch.linalg.solve(lam * C.double() + K @ K.T, K)  # [d_mlp, n]
    return resid @ adj.T


@dataclass
class SpreadConfig(LocateEditConfig):
    """Fields shared by the methods that spread one batch update over layers (MEMIT, AlphaEdit)."""

    layers: tuple | None = None
    v_num_grad_steps: int = 25
    clamp_norm_factor: float = 0.75
    context_template_length_params: tuple = ((10, 5),)

    needs_stats = True

    def edit_layers(self, n_layers: int) -> list[int]:
        if self.layers is None:  # GPT-J's R = {3, ..., 8} of 28 layers, at the same relative depth
            return list(range(by_fraction(n_layers, 3), by_fraction(n_layers, 8) + 1))
        return check_layers(self.layers, n_layers, f"edit ({self.method}): layers")

    def layer_update(self, i: int, layer: int, K: torch.Tensor, resid: torch.Tensor, C: torch.Tensor,
                     state) -> torch.Tensor:
        raise NotImplementedError

    def run(self, model, tokenizer, requests, layers, stats, state=None):
        groups = context_templates(model, tokenizer, self.context_template_length_params, self.seed)
        last = layers[-1]
        hook = f"blocks.{last}.resid_post"
        # every request's z together (one batched forward/backward per step), equal to one request at a time
        inits, deltas, logs = optimise_targets(model, tokenizer, requests, hook, groups, self.target_settings())
        logs = [{**log, "delta_norm": float(d.norm())} for log, d in zip(logs, deltas)]
        Z = (inits + deltas).T  # [d_model, n]
        out = {}
        for i, layer in enumerate(layers):
            K = mean_keys(model, tokenizer, requests, layer, groups).T  # [d_mlp, n], on the model edited so far
            current = activations_at_subject(model, tokenizer, requests, hook).T  # [d_model, n]
            resid = (Z - current) / (len(layers) - i)  # spread the remaining error over the remaining layers
            upd = self.layer_update(i, layer, K, resid, stats[layer], state)  # [d_model, d_mlp]
            weight = model.blocks[layer].mlp.down_proj.weight
            with torch.no_grad():
                weight.add_(upd.to(weight.dtype))
            out[f"blocks.{layer}.mlp.down_proj.weight"] = upd.float()
        self.after_edit(model, tokenizer, requests, layers, groups, state)
        return out, logs

    def after_edit(self, model, tokenizer, requests, layers, groups, state) -> None:
        pass


@register_editor("memit")
@dataclass
class MemitConfig(SpreadConfig):
    """MEMIT settings. Defaults from the reference ``hparams/MEMIT/EleutherAI_gpt-j-6B.json``: ``layers`` =
    GPT-J's {3..8} of 28 at the same relative depth (paper Sec. 5.1 / Fig. 6), ``v_num_grad_steps=25``,
    ``v_lr=0.5``, ``v_weight_decay=0.5``, ``clamp_norm_factor=0.75``, ``kl_factor=0.0625``,
    ``mom2_update_weight=15000`` (lambda), ``mom2_n_samples=100000``, ``context_template_length_params=((10, 5),)``
    (5 prefixes of 10 tokens + the bare prompt; keys averaged per group, then over groups)."""

    mom2_update_weight: float = 15000.0

    def layer_update(self, i, layer, K, resid, C, state):
        return memit_update(C, K, resid, self.mom2_update_weight)
