"""CounterFact-style cases on a real checkpoint: reading records with paraphrase and neighbourhood prompts, and
CounterFact's probability-comparison scores (Meng et al. 2022, "Locating and Editing Factual Associations in
GPT", Sec. 4.2 / App. C).

- ``read_counterfact(path)``: :class:`~lmlab.edit.evaluate.WorldEdit` cases from CounterFact records
  (``requested_rewrite`` with ``target_true`` / ``target_new``, ``paraphrase_prompts``, ``neighborhood_prompts``;
  ``neighborhood_targets`` when the neighbours' answers differ from ``target_true``). Default: the 100 real facts
  shipped in ``lmlab/assets/edit/real_counterfact.jsonl`` (``scripts/build_real_counterfact.py``).
- ``counterfact_scores``: efficacy score ES = share of edit prompts where the new object is more likely than the
  true one, paraphrase score PS = the same on paraphrase prompts, neighbourhood score NS = share of neighbour
  prompts where the neighbour's true object stays more likely than the edit's new object. "More likely" compares
  the mean per-token log-probability of each object's tokens, as the reference evaluation does (objects of
  different token counts); plus greedy exact-match efficacy and paraphrase rates.
- ``without_bos``: a tokenizer view with no BOS, for checkpoints that are not trained with one (SmolLM2's BOS id
  is ``<|im_start|>``, which its plain-text documents do not start with); every editing function reads
  ``tokenizer.bos_id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from lmlab.core.logprobs import sequence_logprobs
from lmlab.edit.evaluate import WorldEdit, _match_rate
from lmlab.edit.requests import make_request
from lmlab.errors import LmlabError

REAL_FACTS = Path(__file__).resolve().parents[1] / "assets" / "edit" / "real_counterfact.jsonl"


class without_bos:  # noqa: N801 -- used like a function: without_bos(tok)
    """The same tokenizer with ``bos_id = None`` (attribute access is forwarded)."""

    bos_id = None

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self) -> int:
        return len(self._tok)


def _record_case(rec: dict, where: str) -> WorldEdit:
    if not isinstance(rec, dict) or not isinstance(rec.get("requested_rewrite"), dict):
        raise LmlabError(f"{where}: expected a CounterFact record with a 'requested_rewrite' object")
    rw = rec["requested_rewrite"]
    strs = {}
    for key in ("target_true", "target_new"):
        value = rw.get(key)
        value = value.get("str") if isinstance(value, dict) else value
        if not isinstance(value, str) or not value.strip():
            raise LmlabError(f"{where}: requested_rewrite.{key} must be a non-empty string or {{'str': ...}}")
        strs[key] = value.strip()
    request = make_request(rw.get("prompt"), rw.get("subject"), strs["target_new"], where)
    paraphrases = rec.get("paraphrase_prompts", [])
    neigh = rec.get("neighborhood_prompts", [])
    targets = rec.get("neighborhood_targets", [strs["target_true"]] * len(neigh))
    for name, value in (("paraphrase_prompts", paraphrases), ("neighborhood_prompts", neigh),
                        ("neighborhood_targets", targets)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise LmlabError(f"{where}: {name} must be a list of non-empty strings")
    if len(targets) != len(neigh):
        raise LmlabError(f"{where}: {len(neigh)} neighborhood_prompts but {len(targets)} neighborhood_targets")
    return WorldEdit(request, " " + strs["target_true"], list(paraphrases),
                     [(p, " " + t.strip()) for p, t in zip(neigh, targets)])


def read_counterfact(path: str | Path | None = None, n: int | None = None) -> list[WorldEdit]:
    """The first ``n`` cases (all when None) of a CounterFact JSONL / JSON-list file (default: the real facts)."""
    path = Path(path) if path is not None else REAL_FACTS
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path}: cannot read CounterFact records ({e})") from None
    try:
        if text.lstrip().startswith("["):
            records = [(f"{path}: item {i}", r) for i, r in enumerate(json.loads(text))]
        else:
            records = [(f"{path}:{k}", json.loads(line)) for k, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}: not valid JSON / JSONL ({e.msg} at line {e.lineno})") from None
    if n is not None:
        if n > len(records):
            raise LmlabError(f"{path}: asked for {n} cases, the file has {len(records)}")
        records = records[:n]
    return [_record_case(rec, where) for where, rec in records]


@torch.no_grad()
def mean_token_logprob(model, tok, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """[N] mean log-probability per answer token of ``answers[i]`` after ``prompts[i]`` (BOS when the tokenizer
    has one)."""
    bos = [tok.bos_id] if tok.bos_id is not None else []
    out = []
    for s in range(0, len(prompts), batch_size):
        rows = [(bos + tok.encode(p), tok.encode(a)) for p, a in zip(prompts[s:s + batch_size], answers[s:s + batch_size])]
        T = max(len(p) + len(a) for p, a in rows)
        ids = torch.tensor([p + a + [0] * (T - len(p) - len(a)) for p, a in rows], device=model.device)
        total = sequence_logprobs(model, ids, prompt_lengths=torch.tensor([len(p) for p, _ in rows]),
                                  lengths=torch.tensor([len(p) + len(a) for p, a in rows]))
        out.append(total.cpu() / torch.tensor([len(a) for _, a in rows], dtype=total.dtype))
    return torch.cat(out)


def counterfact_scores(model, tok, cases: Sequence[WorldEdit], exact_match: bool = True) -> dict[str, float]:
    """ES, PS, NS (probability comparisons, see the module docstring) and greedy exact-match efficacy /
    paraphrase rates, each in [0, 1]."""
    if not cases:
        raise LmlabError("counterfact_scores: no cases")
    prompts = [c.request.text for c in cases]
    new = [c.request.target_text for c in cases]
    old = [c.old for c in cases]
    para = [(p, c.request.target_text, c.old) for c in cases for p in c.paraphrases]
    neigh = [(p, a, c.request.target_text) for c in cases for p, a in c.neighbours]

    def share(triples) -> float:
        if not triples:
            return float("nan")
        ps, a, b = zip(*triples)
        return float((mean_token_logprob(model, tok, ps, a) > mean_token_logprob(model, tok, ps, b)).float().mean())

    out = {"efficacy_score": share(list(zip(prompts, new, old))), "paraphrase_score": share(para),
           "neighbourhood_score": share(neigh), "n_edits": len(cases)}
    if exact_match:
        out["efficacy"] = _match_rate(model, tok, prompts, new)
        out["paraphrase"] = _match_rate(model, tok, [p for p, _, _ in para], [a for _, a, _ in para])
    return out
