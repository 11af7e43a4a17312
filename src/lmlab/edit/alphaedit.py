"""AlphaEdit: Null-Space Constrained Knowledge Editing (Fang et al. 2025, ICLR, arXiv:2410.02355).

MEMIT's layer-spread edit with the update projected onto the null space of the preserved knowledge's keys:

    P = U_0 U_0^T   (eigenvectors of K_0 K_0^T = C whose eigenvalues are below ``nullspace_threshold``)
    Delta = R K^T P (K_p K_p^T P + K K^T P + alpha I)^-1 P  ... computed as in the reference solve:
    X = solve(P (K K^T + K_p K_p^T) + alpha I, P K R^T),   Delta = X^T   (= R K^T (P M + alpha I)^-1 P)

so ``Delta k_0 = 0`` for every preserved key (``P k_0 = 0``): preserved outputs do not move. ``K_p`` are the
keys of earlier edits in a sequence; pass the same :class:`AlphaEditState` to successive ``edit`` calls
(sequential editing is where the paper's gains are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmlab.edit.locate import mean_keys
from lmlab.edit.memit import SpreadConfig
from lmlab.edit.registry import register_editor


def null_space_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """``P`` [d, d]: projector onto the eigenvectors of ``C`` with eigenvalue < ``threshold``."""
    eigvals, eigvecs = torch.linalg.eigh(C.double())
    U = eigvecs[:, eigvals < threshold]  # [d, r]
    return U @ U.T


def alphaedit_update(P: torch.Tensor, K: torch.Tensor, resid: torch.Tensor, prev: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """``Delta`` [d_model, d_mlp] fp64 for keys ``K`` [d_mlp, n], residuals [d_model, n], earlier edits' ``K_p K_p^T``."""
    K, resid, P = K.double(), resid.double(), P.double()
    eye = torch.eye(K.shape[0], dtype=torch.float64)
    X = torch.linalg.solve(P @ (K @ K.T + prev.double()) + alpha * eye, P @ K @ resid.T)  # [d_mlp, d_model]
    return X.T


@dataclass
class AlphaEditState:
    """What sequential AlphaEdit carries between calls: ``K_p K_p^T`` per layer (and the projectors)."""

    edited_kk: dict = field(default_factory=dict)  # layer -> [d_mlp, d_mlp]
    projectors: dict = field(default_factory=dict)  # layer -> P


@register_editor("alphaedit")
@dataclass
class AlphaEditConfig(SpreadConfig):
    """AlphaEdit settings. Defaults from the reference ``hparams/AlphaEdit/gpt2-xl.json`` /
    ``EleutherAI_gpt-j-6B.json``: MEMIT's (layers at GPT-J's {3..8}/28, ``v_num_grad_steps=25``, ``v_lr=0.5``,
    ``clamp_norm_factor=0.75``, ``kl_factor=0.0625``, ...) plus ``nullspace_threshold=2e-2`` (eigenvalues of
    ``C`` below it span the null space) and ``L2=10`` (alpha, the ridge term). MEMIT's ``lambda C`` term is
    replaced by the projection, so there is no ``mom2_update_weight``."""

    nullspace_threshold: float = 2e-2
    L2: float = 10.0

    def layer_update(self, i, layer, K, resid, C, state):
        state = state if state is not None else AlphaEditState()
        if layer not in state.projectors:
            state.projectors[layer] = null_space_projector(C, self.nullspace_threshold)
        prev = state.edited_kk.get(layer, torch.zeros(K.shape[0], K.shape[0], dtype=torch.float64))
        return alphaedit_update(state.projectors[layer], K, resid, prev, self.L2)

    def after_edit(self, model, tokenizer, requests, layers, groups, state) -> None:
        if state is None:
            return
        for layer in layers:  # the keys as the edited model now computes them (reference: cache_c update)
            K = mean_keys(model, tokenizer, requests, layer, groups).T
            kk = K @ K.T
            state.edited_kk[layer] = state.edited_kk.get(layer, torch.zeros_like(kk)) + kk
