"""``edit(model, tokenizer, requests, method=...) -> WeightDelta`` (applied on return; ``revert`` undoes it)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn

from lmlab.core.delta import WeightDelta
from lmlab.edit.registry import get_editor
from lmlab.edit.requests import EditRequest, validate_requests
from lmlab.edit.stats import second_moments
from lmlab.errors import LmlabError


def edit(model: nn.Module, tokenizer, requests: EditRequest | Sequence[EditRequest], method: str = "memit", *,
         corpus=None, stats_dir=None, state: Any = None, pool=None, **hparams: Any) -> WeightDelta:
    """Write ``requests`` into ``model`` with ``method`` ("rome", "memit", "alphaedit"); returns the applied delta.
    ``method="ike"`` changes no weight: it returns an :class:`lmlab.edit.ike.InContextEdit` (prompt contexts
    built from the demonstration cases ``pool``), whose ``apply`` / ``revert`` do nothing.

    ``corpus``: texts (or a text file) for the key statistics, cached under ``stats_dir`` (default
    ``~/.cache/lmlab/edit-stats``; ``False``: no cache). ``state``: an :class:`AlphaEditState` carried across
    sequential AlphaEdit calls. ``hparams``: the method's config fields (see its config class). Every check --
    requests, targets, layers, hyperparameters, statistics -- happens before the model is touched; on any error
    the model is left exactly as it was.
    """
    cls = get_editor(method)
    cfg = cls.from_kwargs(hparams)
    reqs = validate_requests(requests, tokenizer)
    if getattr(cls, "in_context", False):
        if state is not None or corpus is not None:
            raise LmlabError(f"edit: {method} edits by prompting; it takes no state= or corpus=")
        return cfg.build(reqs, pool)
    if pool is not None:
        raise LmlabError(f"edit: pool= (demonstrations) is for method='ike', not {method!r}")
    if state is not None and method != "alphaedit":
        raise LmlabError(f"edit: state= is for sequential alphaedit, not {method!r}")
    layers = cfg.choose_layers(model, tokenizer, reqs)  # ROME layer="trace" looks at the model (no weight change)
    stats = second_moments(model, tokenizer, layers, corpus, cfg.mom2_n_samples, stats_dir) if cfg.needs_stats else {}
    names = [f"blocks.{layer}.mlp.down_proj.weight" for layer in layers]
    params = dict(model.named_parameters())
    if any(p.is_inference() for p in model.parameters()):
        raise LmlabError("edit: the model's weights were created under torch.inference_mode, which forbids the "
                         "gradients editing needs; load the model outside inference_mode")
    originals = {n: params[n].detach().clone() for n in names}
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        deltas, logs = cfg.run(model, tokenizer, reqs, layers, stats, state)
    finally:  # the methods edit in place while they work (later layers see earlier edits): undo exactly
        with torch.no_grad():
            for n, original in originals.items():
                params[n].copy_(original)
        model.train(was_training)
    seconds = time.perf_counter() - started
    delta = WeightDelta(deltas, {"method": method, "config": cfg.to_dict(), "layers": layers,
                                 "requests": [r.to_dict() for r in reqs], "log": logs, "seconds": seconds})
    return delta.apply(model)
