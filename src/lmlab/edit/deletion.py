"""Deleting a fact with ROME, and the defence objectives of "Can Sensitive Information Be Deleted From LLMs?
Objectives for Defending Against Extraction Attacks" (Patil, Hase & Bansal, ICLR 2024, arXiv:2309.17410, Sec. 5).

``edit(model, tok, requests, method="rome_delete", objective=...)``: each request's ``target`` is the answer to
*remove* (not a new object). ROME's machinery is unchanged -- key ``k*`` averaged over context templates, a vector
``delta`` added to ``blocks.{l}.mlp.out`` at the subject's last token, the rank-one update of eq. 2
(:func:`lmlab.edit.rome.rome_update`), requests one after another -- only the objective of the ``delta`` search
changes (ROME's KL term on "{} is a" and its weight decay stay, as in the paper):

- ``"fact_erasure"`` (the paper's baseline deletion objective): minimise the answer's probability
  ``p(answer | prompt)`` (exp of the mean token log-probability), averaged over the rewriting prompts.
- ``"head_projection"`` (HP defence, against the logit-lens attacks): at every defence layer's logit lens
  (``ln_final`` + unembedding of ``blocks.{l}.resid_post``) at the position that predicts the answer's first
  token, the margin losses ``max(0, p_l(a) - p_l(k-th most likely))`` and ``max(0, p_l(k-th least likely) -
  p_l(a))``, averaged over layers and prompts: the answer leaves each layer's top-k (what the head-projection
  attack reads) without being pushed to the very bottom (which the probability-delta attack could read). As in the
  paper's objective, this replaces the erasure term.
- ``"max_entropy"`` (ME defence): maximise the mean entropy of the same logit-lens distributions, so no layer
  singles out any answer (replaces the erasure term).
- Input rephrasing (IR defence, against the paraphrase attack): ``rephrasings`` gives, per request, other prompt
  templates for the same fact (``{}`` for the subject); the objective above is applied on them too, in addition
  to the context-templated edit prompt (the paper rephrases with a paraphrase model; on the world, the relation's
  other training templates, disjoint from the held-out templates the paraphrase attack uses).

Defaults: ``defence_k=2`` (the attack table's top-k per layer, ``scripts/unlearn_table.py``); ``defence_layers``
default to every layer from the edited one to the last (the only ones ``delta`` can change at that position). Other
fields and defaults are ROME's (:class:`lmlab.edit.rome.RomeConfig`). The early stop of the rewrite search is off
(the erasure objectives have no floor of zero), so every request runs ``v_num_grad_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from lmlab.edit.locate import Encoded, _gather, context_templates, encode_rows, mean_keys
from lmlab.edit.registry import register_editor
from lmlab.edit.requests import EditRequest
from lmlab.edit.rome import RomeConfig, rome_update
from lmlab.errors import LmlabError

OBJECTIVES = ("fact_erasure", "head_projection", "max_entropy")


def lens_probs(model, states: torch.Tensor) -> torch.Tensor:
    """Logit-lens probabilities ``softmax(lm_head(ln_final(h)))`` [..., vocab] of residual states [..., d_model]."""
    return F.softmax(model.lm_head(model.ln_final(states)).float(), -1)


def margin_loss(probs: torch.Tensor, answer: torch.Tensor, k: int) -> torch.Tensor:
    """The head-projection defence's loss: ``max(0, p(a) - p_(k)) + max(0, p_(-k) - p(a))`` averaged over rows.
    ``probs`` [R, vocab], ``answer`` [R] token ids; ``p_(k)`` the k-th largest, ``p_(-k)`` the k-th smallest."""
    p_a = probs.gather(-1, answer[:, None])[:, 0]  # [R]
    top_k = probs.topk(k, -1).values[:, -1]  # [R]
    bottom_k = (-probs).topk(k, -1).values[:, -1].neg()  # [R]
    return (F.relu(p_a - top_k) + F.relu(bottom_k - p_a)).mean()


def lens_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the rows of ``probs`` [R, vocab]."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()


@register_editor("rome_delete")
@dataclass
class RomeDeleteConfig(RomeConfig):
    """ROME for deletion with the sensitive-information paper's objectives (module docstring). ``objective``:
    "fact_erasure" (default), "head_projection" or "max_entropy"; ``rephrasings``: per request a list of other
    prompt templates with ``{}`` (the input-rephrasing defence; empty: none); ``defence_k``: the top-k of the
    margin loss; ``defence_layers``: the logit-lens layers of the HP / ME objectives (None: edit layer to last)."""

    objective: str = "fact_erasure"
    rephrasings: tuple = ()
    defence_k: int = 2
    defence_layers: tuple | None = None

    def validate(self, where: str = "edit") -> None:
        super().validate(where)
        if self.objective not in OBJECTIVES:
            raise LmlabError(f"{where} (rome_delete): objective must be one of {', '.join(OBJECTIVES)}, "
                             f"got {self.objective!r}")
        if self.defence_k < 1:
            raise LmlabError(f"{where} (rome_delete): defence_k must be >= 1, got {self.defence_k}")

    def _check(self, requests: Sequence[EditRequest], n_layers: int) -> list[list[str]]:
        reph = [list(r) for r in self.rephrasings] if self.rephrasings else [[] for _ in requests]
        if len(reph) != len(requests):
            raise LmlabError(f"edit (rome_delete): rephrasings has {len(reph)} lists for {len(requests)} requests")
        for i, group in enumerate(reph):
            for t in group:
                if not isinstance(t, str) or t.count("{}") != 1:
                    raise LmlabError(f"edit (rome_delete): rephrasings[{i}] item {t!r} must be a string with one '{{}}'")
        for layer in self.defence_layers or ():
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
                raise LmlabError(f"edit (rome_delete): defence layer {layer!r} is out of range (0..{n_layers - 1})")
        return reph

    def run(self, model, tokenizer, requests, layers, stats, state=None):
        """{param name: delta} and a log per request; leaves ``model`` changed (the caller restores it)."""
        (layer,) = layers
        reph = self._check(requests, model.config.n_layers)
        lens_layers = list(self.defence_layers) if self.defence_layers else list(range(layer, model.config.n_layers))
        groups = context_templates(model, tokenizer, self.context_template_length_params, self.seed)
        flat = [t for g in groups for t in g]
        weight = model.blocks[layer].mlp.down_proj.weight
        C = stats[layer] if self.mom2_adjustment else torch.eye(weight.shape[1], dtype=torch.float64)
        total = torch.zeros(weight.shape, dtype=torch.float64)
        logs = []
        for request, extra in zip(requests, reph):
            k = mean_keys(model, tokenizer, [request], layer, [flat])[0]  # [d_mlp]
            delta, log = self.search(model, tokenizer, request, layer, flat, extra, lens_layers)
            k_den = None if self.update_key == "mean" else mean_keys(model, tokenizer, [request], layer, [["{}"]])[0]
            upd = rome_update(C, k, delta, k_den)  # [d_model, d_mlp]
            with torch.no_grad():
                weight.add_(upd.to(weight.dtype))
            total += upd
            logs.append({**log, "layer": layer, "delta_norm": float(delta.norm())})
        return {f"blocks.{layer}.mlp.down_proj.weight": total.float()}, logs

    def search(self, model, tokenizer, request: EditRequest, layer: int, flat: list[str], rephrasings: list[str],
               lens_layers: list[int]) -> tuple[torch.Tensor, dict]:
        """``delta`` [d_model] at ``blocks.{layer}.mlp.out`` minimising the deletion objective; its log."""
        dev = model.device
        answer = tokenizer.encode(request.target_text)
        rewrite = [ctx.replace("{}", request.prompt, 1) for ctx in flat] + list(rephrasings)
        kl = ["{} is a"]
        enc: Encoded = encode_rows(tokenizer, rewrite + kl, [request.subject] * (len(rewrite) + len(kl)),
                                   suffixes=[answer] * len(rewrite) + [[]] * len(kl), device=dev)
        n_rw, n_a = len(rewrite), len(answer)
        rows = torch.arange(n_rw, device=dev)
        first = enc.lengths[:n_rw] - n_a - 1  # [n_rw] the position predicting the answer's first token
        ans_pos = first[:, None] + torch.arange(n_a, device=dev)[None]  # [n_rw, n_a]
        ans_ids = torch.tensor(answer, device=dev)
        delta = torch.zeros(model.config.d_model, device=dev, requires_grad=True)
        state: dict = {"init": None}

        def add_delta(x: torch.Tensor, name: str) -> torch.Tensor:
            if state["init"] is None:
                state["init"] = x[0, enc.lookup[0]].detach().float().clone()  # the bare prompt's MLP output
            bump = torch.zeros(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
            bump[torch.arange(x.shape[0], device=x.device), enc.lookup] = 1
            return x + bump * delta.to(x.dtype)  # [B, T, d_model]

        with torch.no_grad():
            base = model(enc.ids, stop_at_layer=layer)  # [B, T, d_model]: the layers below do not see delta
        names = [f"blocks.{i}.resid_post" for i in lens_layers]
        frozen = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        opt = torch.optim.Adam([delta], lr=self.v_lr)
        kl_init, log = None, {}
        try:
            with torch.enable_grad(), model.hooks([(f"blocks.{layer}.mlp.out", add_delta)]):
                for it in range(self.v_num_grad_steps + 1):  # the last pass only measures
                    opt.zero_grad()
                    hidden, cache = model.run_with_cache(start_at_layer=layer, residual=base,
                                                         stop_at_layer=model.config.n_layers, names=names,
                                                         detach=False)  # [B, T, d_model]
                    logp = F.log_softmax(model.lm_head(model.ln_final(hidden[rows[:, None], ans_pos])).float(), -1)
                    p_answer = logp.gather(-1, ans_ids.expand(n_rw, n_a)[..., None])[..., 0].mean(1).exp()  # [n_rw]
                    kl_logp = F.log_softmax(model.lm_head(model.ln_final(_gather(hidden[n_rw:], enc.lookup[n_rw:])))
                                            .float(), -1)
                    if kl_init is None:
                        kl_init = kl_logp.detach().clone()
                    kl_loss = self.kl_factor * (kl_logp.exp() * (kl_logp - kl_init)).sum(-1).mean()
                    wd = self.v_weight_decay * delta.norm() / state["init"].norm() ** 2
                    lens = lens_probs(model, torch.stack([cache[n][rows, first] for n in names]))  # [L, n_rw, V]
                    flat_lens = lens.reshape(-1, lens.shape[-1])
                    margin = margin_loss(flat_lens, ans_ids[0].expand(flat_lens.shape[0]), self.defence_k)
                    entropy = lens_entropy(flat_lens)
                    term = {"fact_erasure": p_answer.mean(), "head_projection": margin, "max_entropy": -entropy}
                    loss = term[self.objective] + kl_loss + wd
                    log = {"steps": it, "loss": loss.item(), "answer_prob": p_answer.mean().item(),
                           "margin": margin.item(), "lens_entropy": entropy.item(), "kl": kl_loss.item()}
                    if it == 0:
                        log0 = {f"initial_{k}": v for k, v in log.items() if k not in ("steps", "loss", "kl")}
                    if it == self.v_num_grad_steps:
                        break
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        max_norm = self.clamp_norm_factor * state["init"].norm()
                        if delta.norm() > max_norm:
                            delta.mul_(max_norm / delta.norm())
        finally:
            for p, req in frozen:
                p.requires_grad_(req)
        return delta.detach().double(), {**log0, **log, "objective": self.objective, "n_rephrasings": len(rephrasings)}
