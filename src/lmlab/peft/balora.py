"""BA-LoRA's three output-space regularisers (Chang, Chang & Wu 2024, arXiv:2408.04556).

BA-LoRA is LoRA trained with ``loss = task_loss + l1 * L_consistency + l2 * L_diversity + l3 * L_svd``,
all computed from the fine-tuned model's logits on the tokens that carry a loss. For generation (``"nlg"``,
the default here, as the paper's LLaMA/Mistral/Gemma experiments):

- consistency: ``T^2 * KL(p_pre || p_ft)`` with temperature-``T`` softmaxes, averaged over tokens: keep the
  fine-tuned next-token distribution near the pre-trained one ("knowledge drift");
- diversity: ``-H(p_ft)``, the negative mean entropy: keep the output distribution from collapsing;
- SVD: ``-(sum of the top-k singular values / sum of all)`` of the [tokens, vocab] logit matrix: favour
  outputs dominated by a few principal directions, robust to noise.

For understanding tasks (``"nlu"``, logits are per-example class scores [N, C]) the paper uses
MSE between L2-normalised fine-tuned and pre-trained outputs, and the off-diagonal covariance penalty
``sum_{i != j} Cov_ij^2 / C`` for diversity; the SVD term is the same.

The pre-trained logits come from the same model with its adapters disabled (no second copy needed),
unless ``ref_logits`` are passed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.peft.registry import register_method
from lmlab.peft.inject import active_adapter, disable_adapters
from lmlab.peft.lora import LoraConfig

IGNORE_INDEX = -100


def fields_of(cls) -> list[str]:
    return [f.name for f in fields(cls)]


@register_method("balora")
@dataclass
class BALoRAConfig(LoraConfig):
    """BA-LoRA = LoRA + consistency / diversity / SVD regularisers (Chang et al. 2024, arXiv:2408.04556).

    The LoRA fields are ``LoraConfig``'s. Regulariser defaults come from the authors' released training
    script (cyp-jlu-ai/BA-LoRA, ``train.py``): ``lambda1=1e-4`` (consistency), ``lambda2=3e-4`` (diversity),
    ``lambda3=1e-4`` (SVD), ``svd_k=3`` top singular values. ``temperature=1.0`` is the softmax temperature
    of the consistency KL (their later script's ``distill_temp`` default). ``task="nlg"`` selects the
    generation forms (KL / entropy); ``"nlu"`` the classification forms (normalised MSE / covariance).
    The paper's later versions also initialise LoRA with PiSSA; that is not implemented here.
    """

    lambda1: float = 1e-4
    lambda2: float = 3e-4
    lambda3: float = 1e-4
    svd_k: int = 3
    temperature: float = 1.0
    task: str = "nlg"

    def validate(self) -> None:
        super().validate()
        if self.task not in ("nlg", "nlu"):
            raise LmlabError(f"balora: task must be 'nlg' or 'nlu', got {self.task!r}")
        if self.svd_k < 1:
            raise LmlabError(f"balora: svd_k must be >= 1, got {self.svd_k}")
        if self.temperature <= 0:
            raise LmlabError(f"balora: temperature must be > 0, got {self.temperature}")


def consistency_nlg(logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean_tokens KL(softmax(ref/T) || softmax(logits/T))`` for rows [N, V]."""
    log_p_ft = F.log_softmax(logits.float() / temperature, dim=-1)
    log_p_pre = F.log_softmax(ref_logits.float() / temperature, dim=-1)
    kl = (log_p_pre.exp() * (log_p_pre - log_p_ft)).sum(-1)  # [N]
    return kl.mean() * temperature ** 2


def diversity_nlg(logits: torch.Tensor) -> torch.Tensor:
    """Negative mean entropy of softmax(logits) over rows [N, V] (minimising it raises the entropy)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    return (log_p.exp() * log_p).sum(-1).mean()


def consistency_nlu(outputs: torch.Tensor, ref_outputs: torch.Tensor) -> torch.Tensor:
    """MSE between L2-normalised outputs [N, C] and pre-trained outputs."""
    return F.mse_loss(F.normalize(outputs.float(), dim=-1), F.normalize(ref_outputs.float(), dim=-1))


def diversity_nlu(outputs: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances of outputs [N, C] across the batch, divided by C."""
    n, c = outputs.shape
    if n < 2:
        return outputs.new_zeros((), dtype=torch.float32)
    centered = outputs.float() - outputs.float().mean(0)
    cov = centered.T @ centered / (n - 1)  # [C, C]
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / c


def svd_term(outputs: torch.Tensor, k: int) -> torch.Tensor:
    """``-(sum of top-k singular values / sum of all)`` of the matrix [N, D] (0 when degenerate)."""
    if outputs.shape[0] < 2 or outputs.shape[1] < 2:
        return outputs.new_zeros((), dtype=torch.float32)
    s = torch.linalg.svdvals(outputs.float())
    total = s.sum()
    if float(total.detach()) <= 1e-8:
        return outputs.new_zeros((), dtype=torch.float32)
    return -s[:k].sum() / total


def _token_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, V] -> [N, V] rows of the masked positions (all of them without a mask); 2-D passes through."""
    if t.dim() == 2:
        return t if mask is None else t[mask.bool()]
    if mask is None:
        return t.reshape(-1, t.shape[-1])
    return t[mask.bool()]


def _resolve_config(model: nn.Module, config: BALoRAConfig | None) -> BALoRAConfig:
    if config is not None:
        return config
    name = active_adapter(model)
    cfg = getattr(model, "adapter_configs", {}).get(name) if name else None
    return cfg if isinstance(cfg, BALoRAConfig) else BALoRAConfig()


def balora_terms(model: nn.Module, logits: torch.Tensor, input_ids: torch.Tensor | None = None, *,
                 targets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                 ref_logits: torch.Tensor | None = None, config: BALoRAConfig | None = None,
                 model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
    """The three unweighted terms ``{"consistency", "diversity", "svd"}`` (0-d tensors).

    ``logits``: the adapted model's output for this batch ([B, T, V] for "nlg", [N, C] for "nlu").
    Positions count where ``mask`` is true, or where ``targets != -100`` (targets aligned with logits, as
    lmlab's objectives shift them). ``ref_logits`` default to the model's own forward on ``input_ids``
    with adapters disabled, without gradients (only computed when ``lambda1 > 0``).
    """
    cfg = _resolve_config(model, config)
    if mask is None and targets is not None:
        mask = targets != IGNORE_INDEX
    terms: dict[str, torch.Tensor] = {}
    if cfg.lambda1 != 0:
        if ref_logits is None:
            if input_ids is None:
                raise LmlabError("balora consistency term needs input_ids (or ref_logits) to compute the "
                                 "pre-trained model's logits")
            with torch.no_grad(), disable_adapters(model):
                ref_logits = model(input_ids, **(model_kwargs or {}))
        ref_logits = ref_logits.detach()
        if ref_logits.shape != logits.shape:
            raise LmlabError(f"balora: ref_logits shape {tuple(ref_logits.shape)} != logits shape "
                             f"{tuple(logits.shape)}")
    rows = _token_rows(logits, mask)
    zero = logits.new_zeros((), dtype=torch.float32)
    if cfg.task == "nlg":
        terms["consistency"] = consistency_nlg(rows, _token_rows(ref_logits, mask), cfg.temperature) \
            if ref_logits is not None and rows.numel() else zero
        terms["diversity"] = diversity_nlg(rows) if rows.numel() else zero
    else:
        terms["consistency"] = consistency_nlu(rows, _token_rows(ref_logits, mask)) \
            if ref_logits is not None and rows.numel() else zero
        terms["diversity"] = diversity_nlu(rows) if rows.numel() else zero
    terms["svd"] = svd_term(rows, cfg.svd_k) if rows.numel() else zero
    return terms


def balora_regularizer(model: nn.Module, batch_outputs: torch.Tensor, input_ids: torch.Tensor | None = None, *,
                       targets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       ref_logits: torch.Tensor | None = None, config: BALoRAConfig | None = None,
                       model_kwargs: dict | None = None) -> torch.Tensor:
    """``lambda1 * consistency + lambda2 * diversity + lambda3 * svd`` to add to a task loss.

    ``config`` defaults to the active adapter's ``BALoRAConfig`` (else the paper defaults). See
    ``balora_terms`` for the arguments.
    """
    cfg = _resolve_config(model, config)
    t = balora_terms(model, batch_outputs, input_ids, targets=targets, mask=mask, ref_logits=ref_logits,
                     config=cfg, model_kwargs=model_kwargs)
    return cfg.lambda1 * t["consistency"] + cfg.lambda2 * t["diversity"] + cfg.lambda3 * t["svd"]


class BALoRAObjective:
    """Causal-LM cross-entropy + BA-LoRA regularisers, in lmlab's objective shape ``(model, batch) -> (loss, metrics)``.

    A batch is ``(inputs, targets)`` or a mapping with ``input_ids`` and ``labels``/``targets`` (targets
    aligned with the logits, -100 = no loss). Registered as ``balora`` (``lmlab.train.objective_registry``);
    a recipe's ``run.objective_args`` may set any ``BALoRAConfig`` field (``args_schema``) to override the
    active adapter's value.
    """

    args_schema = BALoRAConfig

    def loss_units(self, batch) -> int:
        from lmlab.train.objectives import count_targets

        return count_targets(batch)

    def __init__(self, config: BALoRAConfig | None = None, **overrides) -> None:
        known = set(fields_of(BALoRAConfig))
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LmlabError(f"balora objective: unknown option(s) {unknown} (known: {sorted(known)})")
        self.config = config
        self.overrides = overrides

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from lmlab.train.objectives import split_batch

        inputs, targets, extra = split_batch(batch)
        cfg = _resolve_config(model, self.config)
        if self.overrides:
            cfg = replace(cfg, **self.overrides)
        logits = model(inputs, **extra)  # [B, T, V]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX)
        terms = balora_terms(model, logits, inputs, targets=targets, config=cfg, model_kwargs=extra)
        reg = cfg.lambda1 * terms["consistency"] + cfg.lambda2 * terms["diversity"] + cfg.lambda3 * terms["svd"]
        metrics = {"ce": ce.detach(), **{f"balora_{k}": v.detach() for k, v in terms.items()}}
        return ce + reg, metrics

