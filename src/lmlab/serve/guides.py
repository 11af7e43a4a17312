"""Per-request guides (lmlab.control: GeDi, GenARM, proxy-tuning, forbidden strings) and where they run.

A guide is a logits processor, and the stateful ones (GeDi, GenARM, proxy-tuning) own a second model with
its own KV cache that follows the rows it was started on. The decoder hands every processor the whole
batch, so the server wraps each guide in :class:`RowSubset`: the engine *claims* a request's row ids for a
guide before the rows join, and the wrapper passes only those rows (in batch order, as the stateful
protocol requires) to the guide at start, step and finish; the other rows' logits pass through untouched.
So a guided request and a plain one share a batch, and a guide costs nothing while no row uses it.

Guides are built exactly as ``lmlab generate --guide ...`` builds them (``lmlab.control.cli_options``: same
classes, same defaults, same control-code encoding); the checkpoints they name are loaded once and shared by
every instance (a fresh instance is needed per decoder, since each instance holds its rows' state).
"""

from __future__ import annotations

import torch

from lmlab.core.processors import StatefulProcessor, StepInfo
from lmlab.errors import LmlabError
from lmlab.serve.config import GuideSpec


class RowSubset(StatefulProcessor):
    """Runs ``inner`` (a logits processor) on the claimed rows of the batch only."""

    def __init__(self, inner, name: str = "") -> None:
        self.inner, self.name = inner, name
        self.claimed: set[int] = set()  # row ids promised to this guide, started or about to be
        self.rows: list[int] = []  # started rows, in the decoder's batch order

    def claim(self, row_ids: list[int]) -> None:
        self.claimed.update(row_ids)

    def release(self, row_ids: list[int]) -> None:
        """Forget rows the decoder never started (a refused join) or already finished."""
        gone = set(row_ids)
        self.claimed -= gone
        self.rows = [r for r in self.rows if r not in gone]

    def start(self, prompts, max_new_tokens, row_ids) -> None:
        mine = [i for i, r in enumerate(row_ids) if r in self.claimed]
        if not mine:
            return
        start = getattr(self.inner, "start", None)
        if start is not None:
            start([prompts[i] for i in mine], [max_new_tokens[i] for i in mine], [row_ids[i] for i in mine])
        self.rows += [row_ids[i] for i in mine]

    def step(self, ids: torch.Tensor, logits: torch.Tensor, info: StepInfo) -> torch.Tensor:  # logits [B, V]
        if not self.rows:
            return logits
        mine = set(self.rows)
        idx = [b for b, r in enumerate(info.row_ids.tolist()) if r in mine]
        sub = torch.tensor(idx, dtype=torch.long, device=logits.device)  # [R] batch positions of our rows
        if len(idx) == logits.shape[0]:
            sub_ids, sub_logits, sub_info = ids, logits, info
        else:
            sub_ids, sub_logits = ids[sub], logits[sub]  # [R, t], [R, V]
            sub_info = StepInfo(row_ids=info.row_ids[sub], prompt_lengths=info.prompt_lengths[sub],
                                new_tokens=info.new_tokens[sub], step=info.step)
        step = getattr(self.inner, "step", None)
        out = step(sub_ids, sub_logits, sub_info) if step is not None else self.inner(sub_ids, sub_logits)
        if len(idx) == logits.shape[0]:
            return out
        logits = logits.clone()
        logits[sub] = out.to(logits.dtype)
        return logits

    def finish(self, row_ids) -> None:
        started = set(self.rows)
        mine = [r for r in row_ids if r in started]
        self.release(list(row_ids))
        finish = getattr(self.inner, "finish", None)
        if mine and finish is not None:
            finish(mine)


class GuideTable:
    """The config's guides, by name: ``fresh(name)`` builds a new processor list sharing the loaded models."""

    def __init__(self, model, tokenizer, specs: dict[str, GuideSpec]) -> None:
        self.model, self.tokenizer, self.specs = model, tokenizer, dict(specs)
        self._models: dict[str, object] = {}
        self._forbid: dict[str, object] = {}  # forbidden-string tables are stateless: built once, shared
        for name in self.specs:  # load every checkpoint and check every option now, not at the first request
            self.fresh(name)

    @property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def describe(self, name: str) -> dict:
        spec = self.specs[name]
        return {"guide": spec.guide or None, "forbid": list(spec.forbid)}

    def _load(self, path: str):
        if path not in self._models:
            import lmlab

            try:
                self._models[path] = lmlab.load(path).eval()
            except LmlabError as e:
                raise LmlabError(f"cannot load {path}: {e}") from None
        return self._models[path]

    def fresh(self, name: str) -> list:
        """New processors for guide ``name`` (the order of ``lmlab generate``: the guide, then --forbid)."""
        try:
            return self._build(name, self.specs[name])
        except LmlabError as e:
            raise LmlabError(f"guide '{name}': {e}") from None

    def _build(self, name: str, spec: GuideSpec) -> list:
        from lmlab.control import ForbidStrings, GeDi, GeDiConfig, GenARM, ProxyTuning

        procs: list = []
        if spec.guide == "gedi":
            missing = [f for f in ("guide_model", "desired_code", "anti_code") if not getattr(spec, f)]
            if missing:
                raise LmlabError(f"gedi needs {', '.join(missing)}")
            if self.tokenizer is None:
                raise LmlabError("gedi needs the server's tokenizer to encode the control codes")
            codes = [self.tokenizer.encode(spec.desired_code), self.tokenizer.encode(spec.anti_code)]
            if not all(codes):
                raise LmlabError("desired_code/anti_code: a control code encodes to no tokens")
            procs.append(GeDi(self._load(spec.guide_model), codes[0], codes[1], GeDiConfig(omega=spec.omega),
                              base=self.model))
        elif spec.guide == "proxy":
            if not spec.tuned or not spec.untuned:
                raise LmlabError("proxy needs tuned and untuned")
            procs.append(ProxyTuning(self._load(spec.tuned), self._load(spec.untuned), alpha=spec.alpha,
                                     base=self.model))
        elif spec.guide == "vas":
            from lmlab.control.vas_file import load_vas

            if not spec.guide_model:
                raise LmlabError("vas needs guide_model (a value-model file from `lmlab steer --method vas`)")
            procs.append(load_vas(spec.guide_model, self.model, beta=spec.guide_scale))
        elif spec.guide == "genarm":
            if not spec.arm:
                raise LmlabError("genarm needs at least one arm")
            procs.append(GenARM([self._load(a) for a in spec.arm], weights=spec.arm_weight or None, beta=spec.beta,
                                base=self.model))
        if spec.forbid:
            if name not in self._forbid:
                if self.tokenizer is None:
                    raise LmlabError("forbid needs the server's tokenizer")
                self._forbid[name] = ForbidStrings(self.tokenizer, spec.forbid, self.model.config.vocab_size)
            procs.append(self._forbid[name])
        return procs

    def subset(self, name: str) -> RowSubset:
        """A fresh instance of guide ``name`` that acts on the rows claimed for it."""
        return RowSubset(_Chain(self.fresh(name)), name)

    def wrappers(self) -> dict[str, RowSubset]:
        """One row-subset wrapper per guide, for a decoder that many requests share."""
        return {name: self.subset(name) for name in self.names}


class _Chain(StatefulProcessor):
    """Several processors applied in order, as one (a guide and its forbidden strings)."""

    def __init__(self, procs: list) -> None:
        self.procs = procs

    def start(self, prompts, max_new_tokens, row_ids) -> None:
        for p in self.procs:
            if hasattr(p, "start"):
                p.start(prompts, max_new_tokens, row_ids)

    def step(self, ids, logits, info):
        for p in self.procs:
            step = getattr(p, "step", None)
            logits = step(ids, logits, info) if step is not None else p(ids, logits)
        return logits

    def finish(self, row_ids) -> None:
        for p in self.procs:
            if hasattr(p, "finish"):
                p.finish(row_ids)
