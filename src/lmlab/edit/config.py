"""The settings every locate-then-edit method shares, and their validation from keyword arguments / YAML.

Defaults follow the reference hyperparameters of ROME / MEMIT / AlphaEdit for GPT-J (``hparams/*/EleutherAI_
gpt-j-6B.json``), cited per method; layers default by depth fraction so that the same choice carries to any
depth (GPT-J has 28 layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, get_type_hints

from lmlab.edit.locate import TargetSettings
from lmlab.errors import LmlabError


def by_fraction(n_layers: int, numerator: int, denominator: int = 28) -> int:
    """The layer at the same relative depth as ``numerator`` of GPT-J's 28 layers."""
    return min(n_layers - 1, max(0, round(numerator / denominator * n_layers)))


@dataclass
class LocateEditConfig:
    """Shared fields (see each method's docstring for where its defaults come from)."""

    method: ClassVar[str] = ""

    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_n_samples: int = 100000
    context_template_length_params: tuple = ((5, 10), (10, 10))
    seed: int = 0

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], where: str = "edit") -> "LocateEditConfig":
        """Build from keyword arguments, coercing numbers (YAML reads 5e-1 as a string); unknown keys and
        wrong types are reported together, naming each."""
        known = {f.name: f for f in fields(cls)}
        hints = get_type_hints(cls)
        errors = [f"unknown hyperparameter {k!r}" for k in kwargs if k not in known]
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key not in known:
                continue
            hint = hints[key]
            try:
                if hint is int and not isinstance(value, bool):
                    if float(value) != int(float(value)):
                        raise ValueError
                    value = int(float(value))
                elif hint is float and not isinstance(value, bool):
                    value = float(value)
                elif hint is bool and not isinstance(value, bool):
                    raise TypeError
            except (TypeError, ValueError):
                errors.append(f"{key}={value!r} is not a valid {getattr(hint, '__name__', hint)}")
                continue
            values[key] = value
        if errors:
            raise LmlabError(f"{where} ({cls.method}): " + "; ".join(errors) +
                             f" (known: {', '.join(sorted(known))})")
        cfg = cls(**values)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "edit") -> None:
        for name in ("v_num_grad_steps", "mom2_n_samples"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{where} ({self.method}): {name} must be >= 1, got {getattr(self, name)}")
        for name in ("v_lr", "clamp_norm_factor"):
            if getattr(self, name) <= 0:
                raise LmlabError(f"{where} ({self.method}): {name} must be > 0, got {getattr(self, name)}")

    def target_settings(self) -> TargetSettings:
        return TargetSettings(self.v_num_grad_steps, self.v_lr, self.v_weight_decay, self.clamp_norm_factor,
                              self.kl_factor)

    def edit_layers(self, n_layers: int) -> list[int]:
        raise NotImplementedError

    def choose_layers(self, model, tokenizer, requests) -> list[int]:
        """The layers to edit for these requests (a method that picks them from the model overrides this)."""
        return self.edit_layers(model.config.n_layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["context_template_length_params"] = [list(p) for p in self.context_template_length_params]
        return {"method": self.method, **d}


def check_layers(layers, n_layers: int, where: str) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise LmlabError(f"{where}: no layers to edit")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise LmlabError(f"{where}: layer {layer!r} is out of range (the model has layers 0..{n_layers - 1})")
    if len(set(layers)) != len(layers):
        raise LmlabError(f"{where}: layers {layers} repeat a layer")
    return sorted(layers)



