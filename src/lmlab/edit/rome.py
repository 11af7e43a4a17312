"""ROME: Rank-One Model Editing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT",
arXiv:2202.05262).

One rank-one update of one MLP down projection ``W`` (``[d_model, d_mlp]``, ``W k = v``), paper eq. 2:

    W' = W + Lambda (C^-1 k*)^T,   Lambda = (v* - W k*) / ((C^-1 k*)^T k*)

``k*``: the key at the subject's last token averaged over the model's own context prefixes; ``C = E[k k^T]``
over ordinary text (:mod:`lmlab.edit.stats`); ``v*``: the MLP output that makes the model say the target,
found as ``v* = W k* + delta`` with ``delta`` optimised at ``blocks.{l}.mlp.out`` (:mod:`lmlab.edit.locate`).
The same ``k*`` is used in the numerator and the denominator: the original code used the un-prefixed key
in one of them, the mismatch that r-ROME (Gupta et al. 2024, arXiv:2403.07175) showed to cause model
collapse under sequential editing. Several requests are applied one after another (each on the model
edited by the previous ones), as the reference ``apply_rome_to_model`` does; the delta is their sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.edit.config import LocateEditConfig, by_fraction, check_layers
from lmlab.edit.locate import context_templates, mean_keys, optimise_target
from lmlab.edit.registry import register_editor
from lmlab.errors import LmlabError


def rome_update(C: torch.Tensor, k: torch.Tensor, residual: torch.Tensor,
                k_denominator: torch.Tensor | None = None) -> torch.Tensor:
    """``Lambda (C^-1 k)^T`` with ``Lambda = residual / ((C^-1 k)^T k')``: ``[d_model, d_mlp]``, fp64.
    ``C`` [d_mlp, d_mlp], ``k`` [d_mlp], ``residual = v* - W k'`` [d_model]; ``k' = k`` (eq. 2, r-ROME) unless
    ``k_denominator`` is given (the original code's bare-prompt key: then ``W' k' = W k' + residual`` exactly)."""
    u = torch.linalg.solve(C.double(), k.double())  # C^-1 k  [d_mlp]
    kd = k.double() if k_denominator is None else k_denominator.double()
    return torch.outer(residual.double(), u) / torch.dot(u, kd)


@register_editor("rome")
@dataclass
class RomeConfig(LocateEditConfig):
    """ROME settings. Defaults from the reference hyperparameters (``hparams/ROME/EleutherAI_gpt-j-6B.json``,
    also GPT-2 XL): ``layer`` at GPT-J's depth 5/28 (GPT-2 XL: 17/48, paper Sec. 3 causal tracing);
    ``v_num_grad_steps=20``, ``v_lr=0.5``, ``v_weight_decay=0.5``, ``clamp_norm_factor=4``, ``kl_factor=0.0625``,
    ``mom2_adjustment=True`` (use C; False: C = I), ``mom2_n_samples=100000`` (here: key positions, from a local
    corpus instead of Wikipedia), ``context_template_length_params=((5, 10), (10, 10))`` (10 prefixes of 5 and
    10 of 10 tokens, plus the bare prompt, one flat average). ``layer="trace"`` chooses the layer by causal tracing
on the requests (Sec. 2.1), as the paper chose its layer, instead of by depth fraction. ``update_key="mean"``
(default): the prefix-averaged ``k*`` in numerator and denominator (paper eq. 2, r-ROME); ``"bare"``: the original
code's bare-prompt key in the denominator, so the edited prompt's MLP output becomes exactly ``v*`` (on a narrow MLP
``(C^-1 k*)^T k / (C^-1 k*)^T k*`` is 0.2-0.5 at the bare prompt's key: the "mean" update delivers only that share of
``delta`` there; docs/claims.md)."""

    layer: int | str | None = None
    mom2_adjustment: bool = True
    update_key: str = "mean"

    def validate(self, where: str = "edit") -> None:
        super().validate(where)
        if self.update_key not in ("mean", "bare"):
            raise LmlabError(f"{where} (rome): update_key must be 'mean' or 'bare', got {self.update_key!r}")
        if isinstance(self.layer, str) and self.layer != "trace":
            raise LmlabError(f"{where} (rome): layer must be a layer index or 'trace', got {self.layer!r}")

    def edit_layers(self, n_layers: int) -> list[int]:
        layer = by_fraction(n_layers, 5) if self.layer is None else self.layer
        return check_layers([layer], n_layers, "edit (rome): layer")

    def choose_layers(self, model, tokenizer, requests) -> list[int]:
        """``layer="trace"``: the layer whose MLP has the largest average indirect effect on these requests'
        prompts (causal tracing, paper Sec. 2.1 -- how the paper chose its layer; :mod:`lmlab.edit.trace`)."""
        if self.layer != "trace":
            return self.edit_layers(model.config.n_layers)
        from lmlab.edit.trace import mlp_indirect_effects

        return [int(mlp_indirect_effects(model, tokenizer, requests, seed=self.seed).argmax())]

    @property
    def needs_stats(self) -> bool:
        return self.mom2_adjustment

    def run(self, model, tokenizer, requests, layers, stats, state=None):
        """{param name: delta} and a log per request; leaves ``model`` changed (the caller restores it)."""
        (layer,) = layers
        groups = context_templates(model, tokenizer, self.context_template_length_params, self.seed)
        flat = [[t for g in groups for t in g]]  # ROME averages the key over all templates at once
        weight = model.blocks[layer].mlp.down_proj.weight
        C = stats[layer] if self.mom2_adjustment else torch.eye(weight.shape[1], dtype=torch.float64)
        total = torch.zeros(weight.shape, dtype=torch.float64)
        logs = []
        for request in requests:
            k = mean_keys(model, tokenizer, [request], layer, flat)[0]  # [d_mlp]
            _, delta, log = optimise_target(model, tokenizer, request, f"blocks.{layer}.mlp.out", groups,
                                            self.target_settings())
            k_den = None if self.update_key == "mean" else mean_keys(model, tokenizer, [request], layer, [["{}"]])[0]
            upd = rome_update(C, k, delta, k_den)  # "mean": W' k* = W k* + delta; "bare": W' k = v* at the prompt
            with torch.no_grad():
                weight.add_(upd.to(weight.dtype))
            total += upd
            logs.append({**log, "layer": layer, "delta_norm": float(delta.norm())})
        return {f"blocks.{layer}.mlp.down_proj.weight": total.float()}, logs
