"""VAS: value augmented sampling (Han et al. 2024, "Value Augmented Sampling for Language Model Alignment and
Personalization", arXiv:2405.06639).

Why: the KL-regularised reward-maximising policy is pi*(a | s) ∝ pi_base(a | s) exp(beta Q(s, a)), so a value
estimator fit on the *frozen* base model's own samples is enough to steer it -- no policy training, and the
strength beta is a decoding-time knob.

- **Value estimator** (:class:`ValueModel`): a causal transformer (any size, sharing the base's tokenizer)
  with a scalar head on its final-norm hidden state; V(s) is read at the last token of state s.
- **Fitting** (:func:`fit_value_model`): sample continuations from the base, score each whole sequence with
  a reward, and regress V on TD(lambda) targets (reward only at the end, gamma = 1):
  G_T = R, G_t = (1 - lambda) V(s_{t+1}) + lambda G_{t+1}. lambda = 1 is the Monte-Carlo return; the
  paper trains with TD(lambda); lambda = 0.95 is our default (the paper's value is not in what we read).
- **Decoding** (:class:`VAS`, a stateful processor): at each step the top-k candidates a of the base
  logits are scored by V(s ∘ a), centred over the k candidates, and beta x that is added to their logits;
  other tokens keep their logits. Defaults as trl's ``VASLogitsProcessor`` (the paper's authors' port):
  beta = 1, top_k = 10. beta = 0 reproduces the base model's tokens exactly.

The estimator keeps its own KV cache of each row's tokens; candidates are scored with one batched
one-token forward over a copy of that cache repeated k times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmlab.control.proxy import check_same_vocabulary
from lmlab.core.processors import StatefulProcessor, StepInfo
from lmlab.errors import LmlabError


class ValueModel(nn.Module):
    """``ValueModel(trunk)(ids, ...) -> [B, T]``: V of the state ending at each position."""

    def __init__(self, trunk: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.config.d_model, 1)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 0.02)
            self.head.bias.zero_()
        self.head.to(next(trunk.parameters()).device)

    @property
    def config(self):
        return self.trunk.config

    @property
    def device(self) -> torch.device:
        return next(self.trunk.parameters()).device

    def forward(self, ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None, cache=None,
                input_lengths: torch.Tensor | None = None) -> torch.Tensor:
        m = self.trunk
        x = m(ids, cache=cache, attention_mask=attention_mask, input_lengths=input_lengths,
              stop_at_layer=m.config.n_layers)  # [B, T, d_model]
        return self.head(m.ln_final(x).float())[..., 0]  # [B, T]


@dataclass(frozen=True)
class ValueFitReport:
    samples: int
    reward_mean: float
    loss_first: float
    loss_last: float


def td_lambda_targets(values: torch.Tensor, reward: torch.Tensor, n_states: torch.Tensor,
                      lam: float) -> torch.Tensor:
    """[B, S] targets from ``values`` [B, S] (state t = prompt + t response tokens, t <= n_states - 1),
    terminal ``reward`` [B] at each row's last state; positions past a row's last state are left 0."""
    B, S = values.shape
    out = torch.zeros_like(values)
    for b in range(B):
        n = int(n_states[b])
        g = float(reward[b])
        out[b, n - 1] = g
        for t in range(n - 2, -1, -1):
            g = (1.0 - lam) * float(values[b, t + 1]) + lam * g
            out[b, t] = g
    return out


def fit_value_model(value_model: ValueModel, base, prompts: Sequence[Sequence[int]],
                    reward_fn: Callable[[list[int], list[int]], float], *, samples_per_prompt: int = 4,
                    max_new_tokens: int = 16, temperature: float = 1.0, td_lambda: float = 0.95, epochs: int = 4,
                    lr: float = 1e-3, batch_size: int = 16, seed: int = 0, pad_id: int = 0) -> ValueFitReport:
    """Sample from ``base``, score with ``reward_fn(prompt, response)``, fit ``value_model`` by TD(lambda)."""
    from lmlab.core.generate import generate

    if not prompts or any(len(p) == 0 for p in prompts):
        raise LmlabError("fit_value_model: give at least one non-empty prompt")
    if not 0.0 <= td_lambda <= 1.0:
        raise LmlabError(f"fit_value_model: td_lambda must be in [0, 1], got {td_lambda}")
    check_same_vocabulary("fit_value_model", ("base", base), ("value model", value_model))
    rows = [list(p) for p in prompts]
    outs = generate(base, rows, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                    num_samples=samples_per_prompt)
    data = []  # (sequence, prompt length, reward)
    for i, seq in enumerate(outs):
        prompt = rows[i // samples_per_prompt]
        data.append((seq, len(prompt), float(reward_fn(prompt, seq[len(prompt):]))))
    opt = torch.optim.AdamW(value_model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    value_model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=g).tolist()
        for start in range(0, len(data), batch_size):
            chunk = [data[j] for j in order[start:start + batch_size]]
            losses.append(_value_step(value_model, opt, chunk, td_lambda, pad_id))
    value_model.eval()
    return ValueFitReport(len(data), sum(d[2] for d in data) / len(data), losses[0], losses[-1])


def _value_step(vm: ValueModel, opt, chunk, lam: float, pad_id: int) -> float:
    T = max(len(s) for s, _, _ in chunk)
    dev = vm.device
    ids = torch.full((len(chunk), T), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros(len(chunk), T, dtype=torch.long, device=dev)
    for b, (s, _, _) in enumerate(chunk):
        ids[b, :len(s)] = torch.tensor(s, device=dev)
        mask[b, :len(s)] = 1
    v = vm(ids, attention_mask=mask)  # [B, T]
    S = max(len(s) - p + 1 for s, p, _ in chunk)  # states: prompt, prompt + 1 token, ...
    idx = torch.zeros(len(chunk), S, dtype=torch.long, device=dev)
    valid = torch.zeros(len(chunk), S, dtype=torch.bool, device=dev)
    n_states = torch.tensor([len(s) - p + 1 for s, p, _ in chunk])
    for b, (s, p, _) in enumerate(chunk):
        n = len(s) - p + 1
        idx[b, :n] = torch.arange(p - 1, len(s), device=dev)
        valid[b, :n] = True
    states = v.gather(1, idx)  # [B, S] V(s_t)
    reward = torch.tensor([r for _, _, r in chunk])
    target = td_lambda_targets(states.detach().cpu(), reward, n_states, lam).to(dev)
    loss = ((states - target) ** 2)[valid].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


class VAS(StatefulProcessor):
    """Adds ``beta`` x the centred values V(s ∘ a) of the ``top_k`` base candidates a to their logits."""

    def __init__(self, value_model: ValueModel, beta: float = 1.0, top_k: int = 10, base=None) -> None:
        if not math.isfinite(beta):
            raise LmlabError(f"VAS: beta must be finite, got {beta}")
        if int(top_k) < 1:
            raise LmlabError(f"VAS: top_k must be >= 1, got {top_k}")
        if base is not None:
            check_same_vocabulary("VAS", ("value model", value_model), ("base", base))
        self.vm, self.beta, self.top_k = value_model, float(beta), int(top_k)
        self.vocab = value_model.config.vocab_size
        self.cache = None
        self.rows: list[int] = []

    @torch.no_grad()
    def start(self, prompts, max_new_tokens, row_ids) -> None:
        vm = self.vm
        heads = [list(p[:-1]) for p in prompts]  # the last prompt token is fed at the row's first step
        cap = max(len(h) + m + 2 for h, m in zip(heads, max_new_tokens))
        T = max(1, max(len(h) for h in heads))
        cache = vm.trunk.new_cache(len(heads), cap)
        if any(heads):
            right = torch.zeros(len(heads), T, dtype=torch.long, device=vm.device)
            for r, h in enumerate(heads):
                right[r, :len(h)] = torch.tensor(h, dtype=torch.long)
            lengths = torch.tensor([len(h) for h in heads], device=vm.device)
            vm.trunk(right, cache=cache, input_lengths=lengths if int(lengths.min()) < T else None,
                     stop_at_layer=vm.config.n_layers)
        if self.cache is None or not self.rows:
            self.cache = cache
        else:
            self.cache.append_rows(cache)
        self.rows.extend(row_ids)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        if info.row_ids.tolist() != self.rows:
            raise LmlabError(f"VAS: rows {info.row_ids.tolist()} do not match the started rows {self.rows}")
        if logits.shape[-1] != self.vocab:
            raise LmlabError(f"VAS: base vocabulary {logits.shape[-1]} differs from the value model's {self.vocab} "
                             "(they must share one tokenizer)")
        vm = self.vm
        vm.trunk(ids[:, -1:].to(vm.device), cache=self.cache, stop_at_layer=vm.config.n_layers)  # commit s_t
        if self.beta == 0.0:
            return logits
        B, k = logits.shape[0], min(self.top_k, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices  # [B, k]
        probe = self.cache.fork(repeats=k)  # rows b*k .. b*k+k-1 are row b's state
        values = vm(top.reshape(B * k, 1).to(vm.device), cache=probe)[:, -1].view(B, k).to(logits.device)
        centred = values - values.mean(dim=-1, keepdim=True)  # [B, k]
        out = logits.clone()
        out.scatter_add_(1, top, self.beta * centred.to(out.dtype))
        if not bool(torch.isfinite(out.gather(1, top)).all()):
            raise LmlabError(f"VAS: beta {self.beta} makes the candidates' logits non-finite (use a smaller beta)")
        return out

    def finish(self, row_ids) -> None:
        gone = set(row_ids)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = None
        elif self.cache is not None and len(keep) != self.cache.batch_size:
            self.cache.select_rows(torch.tensor(keep, dtype=torch.long))
