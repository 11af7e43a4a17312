"""FLoRA: exact aggregation of LoRAs of any ranks by stacking (Wang et al. 2024, arXiv:2409.05976).

Averaging clients' A and B separately (FedAvg on LoRA) is not averaging their updates:
``mean(B_k) @ mean(A_k) != mean(B_k @ A_k)``. FLoRA stacks instead::

    A = [p_1 s_1 A_1; ...; p_K s_K A_K]   (sum r_k x in)      B = [B_1, ..., B_K]   (out x sum r_k)
    B @ A = sum_k p_k s_k B_k @ A_k

which is exact for heterogeneous ranks. The weights ``p_k`` (client data fractions in the paper) scale the
A rows, as in the authors' code; the per-client LoRA scaling ``s_k`` (alpha_k / r_k) is folded in too, and
the stacked LoRA uses scaling 1 (the released code keeps a config alpha / r for the stacked rank, which
rescales the sum). In the paper's rounds the server sends the stacked LoRA, clients merge it into their
base weights and start fresh LoRAs (``flora_merge``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.errors import LmlabError
from lmlab.peft.inject import (
    adapted_modules, adapter_configs, attach, check_new_name, delete_adapter, merge_adapter, require_adapter,
    set_adapter,
)
from lmlab.peft.lora import LoraAdapter, LoraConfig


@dataclass(frozen=True)
class LoraFactors:
    """One LoRA update ``scaling * B @ A``: A [r, in], B [out, r]."""

    A: torch.Tensor
    B: torch.Tensor
    scaling: float = 1.0

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scaling  # [out, in]


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise LmlabError(f"flora: {len(weights)} weights for {n} LoRAs")
    return [float(w) for w in weights]


def stack_loras(loras: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> LoraFactors:
    """Stack LoRAs (any ranks, same in/out) into one whose delta is ``sum_k w_k * delta_k`` (default w_k = 1/K)."""
    if not loras:
        raise LmlabError("flora: nothing to stack")
    w = _weights(len(loras), weights)
    shapes = {(tuple(f.A.shape[1:]), f.B.shape[0]) for f in loras}
    if len(shapes) != 1:
        raise LmlabError(f"flora: LoRAs disagree on (in, out) shapes: {sorted(shapes)}")
    A = torch.cat([f.A * (wk * f.scaling) for f, wk in zip(loras, w)], dim=0)  # [sum r, in]
    B = torch.cat([f.B for f in loras], dim=1)  # [out, sum r]
    return LoraFactors(A, B, 1.0)


def fedavg_loras(loras: Sequence[LoraFactors], weights: Sequence[float] | None = None) -> LoraFactors:
    """The baseline FLoRA replaces: average A's and B's separately (equal ranks only; inexact)."""
    w = _weights(len(loras), weights)
    if len({f.A.shape for f in loras}) != 1 or len({f.scaling for f in loras}) != 1:
        raise LmlabError("fedavg_loras: needs equal ranks and scalings")
    A = sum(f.A * wk for f, wk in zip(loras, w))
    B = sum(f.B * wk for f, wk in zip(loras, w))
    return LoraFactors(A, B, loras[0].scaling)


def _factors(adapter: LoraAdapter) -> LoraFactors:
    return LoraFactors(adapter.lora_A.weight.detach(), adapter.lora_B.weight.detach(), adapter.scaling)


def flora_stack(model: nn.Module, names: Sequence[str], weights: Sequence[float] | None = None,
                new_name: str = "flora", activate: bool = True) -> str:
    """Add LoRA ``new_name`` = stack of the model's LoRA adapters ``names`` (delta = sum_k w_k delta_k).

    Adapters may have different ranks and target different modules; a module only some of them adapt
    stacks only those. Default weights are 1/K (the average); pass ``[1.0] * K`` for the plain sum.
    """
    names = list(names)
    if not names:
        raise LmlabError("flora_stack: no adapter names given")
    for n in names:
        require_adapter(model, n)
    w = dict(zip(names, _weights(len(names), weights)))
    check_new_name(model, new_name)
    stacked: dict[str, tuple[LoraFactors, LoraAdapter]] = {}
    for mod_name, _, slot in adapted_modules(model):
        present = [n for n in names if n in slot]
        if not present:
            continue
        for n in present:
            if not isinstance(slot[n], LoraAdapter):
                raise LmlabError(f"flora_stack: adapter {n!r} on {mod_name} is {type(slot[n]).__name__}, not LoRA")
        f = stack_loras([_factors(slot[n]) for n in present], [w[n] for n in present])
        stacked[mod_name] = (f, slot[present[0]])
    if not stacked:
        raise LmlabError(f"flora_stack: adapters {names} are attached to no module")
    for mod_name, (f, ref) in stacked.items():
        r = f.A.shape[0]
        adapter = LoraAdapter(f.A.shape[1], f.B.shape[0], r, alpha=float(r), use_rslora=False)
        adapter.to(device=ref.lora_A.weight.device, dtype=ref.dtype)
        adapter.set_factors(f.A, f.B)
        attach(model, mod_name, new_name, adapter)
    ranks = sorted({f.A.shape[0] for f, _ in stacked.values()})
    adapter_configs(model)[new_name] = LoraConfig(r=ranks[-1], alpha=float(ranks[-1]), target_modules=sorted(stacked))
    if activate:
        set_adapter(model, new_name)
    return new_name


def flora_merge(model: nn.Module, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
    """One FLoRA server step on a model holding the clients' LoRAs: stack them, merge the stacked update
    into the base weights, and delete the client adapters (clients then start new LoRAs)."""
    name = flora_stack(model, names, weights, new_name="flora_round")
    merge_adapter(model, name)
    delete_adapter(model, name, unmerge=False)
    for n in names:
        delete_adapter(model, n)
