"""IKE: in-context knowledge editing (Zheng et al. 2023, "Can We Edit Factual Knowledge by In-Context Learning?",
EMNLP, arXiv:2305.12740). No weight changes: the new fact and ``k`` demonstrations are put before the prompt.

Demonstrations are built from a pool of *other* edit cases (the paper's training split of CounterFact), three kinds
per case, each written ``"New Fact: {fact}\\nPrompt: {prompt} {answer}\\n\\n"`` with ``fact`` = the case's edit
prompt + new target:

- copy: the prompt is the edit prompt itself, the answer its new target;
- update: a paraphrase prompt of the edited fact, answered with the new target (the edit generalises);
- retain: a neighbourhood prompt (another subject), answered with its own true object (the edit stays local).

Selection (paper Sec. 3): the ``k = 32`` demonstrations nearest to the query fact by cosine similarity, in the ratio
copy : update : retain = 1 : 3 : 4, ordered by ascending similarity so the nearest sits next to the query. The paper
embeds with a sentence encoder (all-MiniLM); nothing can be downloaded here, so similarity is the cosine of
TF-IDF word vectors (``similarity="tfidf"``) -- a lexical stand-in, stated as a substitution. The query is
``"New Fact: {fact}\\nPrompt: "`` followed by the test prompt.

``InContextEdit`` wraps prompts (``wrap``), generation (``generate``) and the scorers (``wrap_cases`` turns
:class:`~lmlab.edit.evaluate.WorldEdit` cases into cases whose every prompt carries its own edit's context, so
``evaluate_edits`` / ``counterfact_scores`` score IKE unchanged). It is returned by ``lmlab.edit.edit(...,
method="ike", pool=cases)``; ``apply`` / ``revert`` touch nothing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

from lmlab.edit.registry import register_editor
from lmlab.edit.requests import EditRequest
from lmlab.errors import LmlabError

KINDS = ("copy", "update", "retain")


@dataclass(frozen=True)
class Demonstration:
    kind: str  # copy | update | retain
    fact: str  # "prompt target_new" of the pool case
    text: str  # the whole demonstration, ending in a blank line


def _fact(request: EditRequest) -> str:
    return request.text + request.target_text


def _demo_text(fact: str, prompt: str, answer: str) -> str:
    return f"New Fact: {fact}\nPrompt: {prompt}{answer if answer.startswith(' ') else ' ' + answer}\n\n"


def demonstrations(pool: Sequence) -> list[Demonstration]:
    """Copy, update (one per paraphrase) and retain (one per neighbour) demonstrations of each pool case
    (objects with ``request``, ``paraphrases`` and ``neighbours`` such as ``WorldEdit``)."""
    out = []
    for case in pool:
        fact = _fact(case.request)
        out.append(Demonstration("copy", fact, _demo_text(fact, case.request.text, case.request.target_text)))
        out += [Demonstration("update", fact, _demo_text(fact, p, case.request.target_text)) for p in case.paraphrases]
        out += [Demonstration("retain", fact, _demo_text(fact, p, a)) for p, a in case.neighbours]
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class TfidfSimilarity:
    """Cosine similarity of TF-IDF word vectors, with document frequencies from the demonstrations' texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        df = Counter(w for t in texts for w in set(_words(t)))
        n = len(texts)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}
        self.vectors = [self.vector(t) for t in texts]

    def vector(self, text: str) -> dict[str, float]:
        tf = Counter(_words(text))
        v = {w: c * self.idf.get(w, math.log(1 + len(self.idf)) + 1) for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def scores(self, query: str) -> list[float]:
        q = self.vector(query)
        return [sum(x * v.get(w, 0.0) for w, x in q.items()) for v in self.vectors]


def select_demonstrations(demos: Sequence[Demonstration], query: str, k: int = 32,
                          ratio: Sequence[int] = (1, 3, 4), similarity: TfidfSimilarity | None = None,
                          exclude_fact: str | None = None) -> list[Demonstration]:
    """The ``k`` demonstrations nearest to ``query`` in the copy:update:retain ``ratio`` (the largest-remainder
    split of ``k``), ordered by ascending similarity; demonstrations of ``exclude_fact`` are never chosen."""
    if k < 1 or len(ratio) != 3 or any(r < 0 for r in ratio) or not sum(ratio):
        raise LmlabError(f"ike: k must be >= 1 and ratio three non-negative counts, got k={k}, ratio={tuple(ratio)}")
    similarity = similarity or TfidfSimilarity([d.text for d in demos])
    scores = similarity.scores(query)
    shares = [k * r / sum(ratio) for r in ratio]
    counts = [int(s) for s in shares]
    for i in sorted(range(3), key=lambda i: shares[i] - counts[i], reverse=True)[:k - sum(counts)]:
        counts[i] += 1
    chosen = []
    for kind, count in zip(KINDS, counts):
        ranked = sorted((i for i, d in enumerate(demos) if d.kind == kind and d.fact != exclude_fact),
                        key=lambda i: (-scores[i], i))
        chosen += ranked[:count]
    return [demos[i] for i in sorted(chosen, key=lambda i: (scores[i], -i))]


@dataclass
class InContextEdit:
    """Edits held as prompt contexts, one per request (see the module docstring)."""

    requests: list[EditRequest]
    contexts: list[str]  # per request: demonstrations + "New Fact: ...\nPrompt: "
    metadata: dict = field(default_factory=dict)

    def context_for(self, subject_or_index) -> str:
        if isinstance(subject_or_index, int):
            return self.contexts[subject_or_index]
        for r, c in zip(self.requests, self.contexts):
            if r.subject == subject_or_index:
                return c
        raise LmlabError(f"ike: no edit of subject {subject_or_index!r}")

    def wrap(self, prompt: str, edit_index: int = 0) -> str:
        return self.contexts[edit_index] + prompt

    def wrap_cases(self, cases: Sequence) -> list:
        """Cases (``WorldEdit``) whose request, paraphrase, neighbour and portability prompts carry the context of
        their own edit (``cases[i]`` belongs to ``requests[i]``)."""
        if len(cases) != len(self.requests):
            raise LmlabError(f"ike: {len(cases)} cases for {len(self.requests)} edits")
        out = []
        for case, ctx in zip(cases, self.contexts):
            safe = ctx.replace("{", "(").replace("}", ")")
            out.append(replace(case, request=replace(case.request, prompt=safe + case.request.prompt),
                               paraphrases=[ctx + p for p in case.paraphrases],
                               neighbours=[(ctx + p, a) for p, a in case.neighbours],
                               portability=[(ctx + p, a) for p, a in getattr(case, "portability", [])]))
        return out

    def generate(self, model, tokenizer, prompts: Sequence[str], edit_index: int = 0, **kwargs) -> list[str]:
        """Greedy continuations of ``prompts`` under edit ``edit_index``'s context (``max_new_tokens`` etc.)."""
        from lmlab.data.recall import greedy_continuations

        return greedy_continuations(model, tokenizer, [self.wrap(p, edit_index) for p in prompts], **kwargs)

    # WeightDelta-like surface, so callers that apply / revert edits need no special case
    def apply(self, model):
        return self

    def revert(self, model):
        return self

    def names(self) -> list[str]:
        return []


@register_editor("ike")
@dataclass
class IKEConfig:
    """IKE settings, from the paper (Sec. 3 / 4.1): ``k=32`` demonstrations, copy:update:retain ``ratio=(1, 3, 4)``;
    ``similarity="tfidf"`` replaces the paper's sentence encoder (see the module docstring)."""

    k: int = 32
    ratio: tuple = (1, 3, 4)
    similarity: str = "tfidf"

    in_context = True

    @classmethod
    def from_kwargs(cls, kwargs: dict, where: str = "edit") -> "IKEConfig":
        unknown = sorted(set(kwargs) - {"k", "ratio", "similarity"})
        if unknown:
            raise LmlabError(f"{where} (ike): unknown hyperparameter(s) {unknown} (known: k, ratio, similarity)")
        cfg = cls(**kwargs)
        if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k < 1:
            raise LmlabError(f"{where} (ike): k must be an integer >= 1, got {cfg.k!r}")
        if cfg.similarity != "tfidf":
            raise LmlabError(f"{where} (ike): similarity must be 'tfidf', got {cfg.similarity!r}")
        cfg.ratio = tuple(cfg.ratio)
        return cfg

    def build(self, requests: Sequence[EditRequest], pool: Sequence) -> InContextEdit:
        if not pool:
            raise LmlabError("edit (ike): pool= must hold demonstration cases (objects with request, paraphrases, "
                             "neighbours, e.g. WorldEdit) other than the edits")
        demos = demonstrations(pool)
        sim = TfidfSimilarity([d.text for d in demos])
        contexts = []
        for r in requests:
            fact = _fact(r)
            head = f"New Fact: {fact}\nPrompt: "
            chosen = select_demonstrations(demos, head + r.text, self.k, self.ratio, sim, exclude_fact=fact)
            contexts.append("".join(d.text for d in chosen) + head)
        return InContextEdit(list(requests), contexts, {"method": "ike", "k": self.k, "ratio": list(self.ratio),
                                                         "similarity": self.similarity, "pool_size": len(pool)})
