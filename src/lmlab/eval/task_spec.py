"""The evaluation task itself: ``Task`` (documents, Jinja2 templates, few-shot contexts, requests) and the
JSONL reader every task source shares.

Its own module so that the two ways of building a Task -- YAML specs (:mod:`lmlab.eval.tasks`) and published
benchmark files (:mod:`lmlab.eval.formats`) -- both depend on it and not on each other.

A task turns each document (one JSON object) into requests through Jinja2 templates over its columns::

    name: capitals
    documents: capitals.jsonl          # relative to this YAML
    output_type: multiple_choice       # | generate_until | loglikelihood_rolling
    doc_to_text: "Q: What is the capital of {{country}}?\\nA:"
    doc_to_choice: "{{options}}"       # renders a Python list literal, or a YAML list of strings
    doc_to_target: "{{answer}}"        # an index (int or digits), a choice string, or a list of indices
    metrics: [acc, acc_norm]

Template semantics follow lm-eval (``lm_eval.api.task.ConfigurableTask``) so a task renders identically in
both: StrictUndefined, trailing newlines kept, a bare column name returns the column's value, a rendered
target of digits is an index, a rendered ``[...]`` is parsed as a literal, ``doc_to_choice`` renders to a list
literal. Few-shot contexts are built as lm-eval builds them (``description`` + ``text target_delimiter answer
fewshot_delimiter`` per example + ``text``), from one ``random.Random(fewshot_seed)`` drawing ``n + 1``
examples per document in document order and dropping the document itself, so a seed gives lm-eval's examples.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lmlab.errors import LmlabError

OUTPUT_TYPES = ("multiple_choice", "generate_until", "loglikelihood_rolling")
DEFAULT_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}
DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's DEFAULT_OTHER_SEED, used by simple_evaluate(fewshot_random_seed=)

REQUIRED = ("name", "output_type")
TEMPLATE_FIELDS = ("doc_to_text", "doc_to_target", "doc_to_choice", "description")
KNOWN_GEN_KWARGS = ("until", "max_new_tokens", "max_gen_toks", "temperature", "do_sample", "top_k", "top_p", "seed")


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


def _env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = _regex_replace  # the one custom filter lm-eval adds
    return env


@functools.cache
def jinja_env():
    """One sandboxed environment (configuration only; compiled templates are kept per Task)."""
    return _env()


def template_variables(source: str, where: str) -> set[str]:
    """Top-level names a template reads (minus Jinja globals such as ``range``)."""
    from jinja2 import TemplateSyntaxError, meta

    env = jinja_env()
    try:
        parsed = env.parse(source)
    except TemplateSyntaxError as err:
        raise LmlabError(f"{where}: Jinja syntax error on line {err.lineno}: {err.message}") from None
    return set(meta.find_undeclared_variables(parsed)) - set(env.globals)


@dataclass
class Task:
    """One evaluation task. Build with ``load_task(yaml_path)`` or directly with ``docs=[...]``.

    Template fields hold Jinja2 strings (or, as in lm-eval, an int target, a list of choices, or a column
    name). ``docs`` are the documents to evaluate; ``fewshot_docs`` the pool few-shot examples are drawn from
    (None: ``docs`` themselves, never the document being evaluated).
    """

    name: str
    output_type: str
    docs: list[dict] = field(default_factory=list, repr=False)
    doc_to_text: Any = None
    doc_to_target: Any = None
    doc_to_choice: Any = None
    description: str = ""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0
    fewshot_docs: list[dict] | None = field(default=None, repr=False)
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED
    generation_kwargs: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    source: str = "<in-memory>"  # where the spec came from, for error messages
    documents: str | None = None  # resolved path of the JSONL, when loaded from YAML
    fewshot_documents: str | None = None
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.metrics:
            self.metrics = list(DEFAULT_METRICS.get(self.output_type, ()))
        self.validate()

    # --------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        where = self.source
        if not isinstance(self.name, str) or not self.name:
            raise LmlabError(f"{where}: field 'name' must be a non-empty string")
        if self.output_type not in OUTPUT_TYPES:
            raise LmlabError(f"{where}: field 'output_type' must be one of {', '.join(OUTPUT_TYPES)}, "
                             f"got {self.output_type!r}")
        needed = {"multiple_choice": ("doc_to_text", "doc_to_target", "doc_to_choice"),
                  "generate_until": ("doc_to_text", "doc_to_target"),
                  "loglikelihood_rolling": ("doc_to_target",)}[self.output_type]
        for name in needed:
            if getattr(self, name) is None:
                raise LmlabError(f"{where}: missing required field {name!r} (output_type {self.output_type})")
        if not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise LmlabError(f"{where}: field 'num_fewshot' must be an integer >= 0, got {self.num_fewshot!r}")
        if not isinstance(self.fewshot_seed, int):
            raise LmlabError(f"{where}: field 'fewshot_seed' must be an integer, got {self.fewshot_seed!r}")
        for name in ("target_delimiter", "fewshot_delimiter", "description"):
            if not isinstance(getattr(self, name), str):
                raise LmlabError(f"{where}: field {name!r} must be a string")
        self._check_generation_kwargs()
        from lmlab.eval.metrics import check_metrics

        check_metrics(self.metrics, self.output_type, where)
        if not self.docs:
            raise LmlabError(f"{where}: task {self.name!r} has no documents")
        for i, d in enumerate(self.docs):
            if not isinstance(d, Mapping):
                raise LmlabError(f"{where}: document {i} must be a JSON object, got {type(d).__name__}")
        columns = set().union(*(d.keys() for d in self.docs))
        if self.fewshot_docs is not None:
            if not self.fewshot_docs:
                raise LmlabError(f"{where}: the few-shot document pool is empty")
            columns &= set().union(*(d.keys() for d in self.fewshot_docs))
        for name in TEMPLATE_FIELDS:
            value = getattr(self, name)
            sources = value if isinstance(value, list) else [value]
            for s in sources:
                if isinstance(s, str) and s not in columns:
                    unknown = sorted(template_variables(s, f"{where}: template {name!r}") - columns)
                    if unknown:
                        raise LmlabError(f"{where}: template {name!r} references unknown column {unknown[0]!r} "
                                         f"(documents have: {', '.join(sorted(columns))})")
                elif s is not None and not isinstance(s, (str, int)):
                    raise LmlabError(f"{where}: field {name!r} must be a template string, an int or a list, "
                                     f"got {type(s).__name__}")
        if self.num_fewshot > 0:
            pool = self.fewshot_docs if self.fewshot_docs is not None else self.docs
            spare = 1 if self.fewshot_docs is None else 0
            if len(pool) < self.num_fewshot + spare:
                raise LmlabError(f"{where}: num_fewshot={self.num_fewshot} needs at least "
                                 f"{self.num_fewshot + spare} few-shot documents, have {len(pool)}")

    def _check_generation_kwargs(self) -> None:
        gk = self.generation_kwargs
        if not isinstance(gk, Mapping):
            raise LmlabError(f"{self.source}: field 'generation_kwargs' must be a mapping")
        for key in gk:
            if key not in KNOWN_GEN_KWARGS:
                raise LmlabError(f"{self.source}: unknown generation_kwargs key {key!r} "
                                 f"(known: {', '.join(KNOWN_GEN_KWARGS)})")
        until = gk.get("until", [])
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
            raise LmlabError(f"{self.source}: generation_kwargs.until must be a string or a list of non-empty strings")

    # ------------------------------------------------------------------------------------------ rendering
    def _apply(self, spec: Any, doc: Mapping, field_name: str) -> Any:
        if spec is None or isinstance(spec, int):
            return spec
        if isinstance(spec, list):
            return [self._apply(s, doc, field_name) for s in spec]
        if spec in doc:  # a bare column name returns the column's value
            return doc[spec]
        from jinja2 import UndefinedError

        template = self._compiled.get(spec)
        if template is None:
            template = self._compiled[spec] = jinja_env().from_string(spec)
        try:
            return template.render(**doc)
        except UndefinedError as err:
            raise LmlabError(f"{self.source}: template {field_name!r}: {err.message} "
                             f"(document columns: {', '.join(sorted(doc))})") from None

    def text(self, doc: Mapping) -> str:
        value = self._apply(self.doc_to_text, doc, "doc_to_text")
        if not isinstance(value, str):
            raise LmlabError(f"{self.source}: doc_to_text must render a string, got {type(value).__name__}")
        return value

    def choices(self, doc: Mapping) -> list[str]:
        spec = self.doc_to_choice
        value = self._apply(spec, doc, "doc_to_choice")
        if isinstance(value, str) and isinstance(spec, str) and spec not in doc:
            try:
                value = ast.literal_eval(value)
            except (SyntaxError, ValueError):
                raise LmlabError(f"{self.source}: doc_to_choice must render a list literal, got {value[:60]!r}") from None
        if isinstance(value, Mapping):
            value = list(value.values())
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
            raise LmlabError(f"{self.source}: doc_to_choice must give a non-empty list of strings, got {value!r:.80}")
        return list(value)

    def target(self, doc: Mapping) -> Any:
        """The raw target: str for generation/rolling; int, str or list for multiple choice (lm-eval rules)."""
        spec = self.doc_to_target
        value = self._apply(spec, doc, "doc_to_target")
        if isinstance(value, str) and isinstance(spec, str) and spec not in doc:
            if value.isdigit() and self.doc_to_choice is not None:
                return int(value)
            if len(value) >= 2 and value[0] == "[" and value[-1] == "]":
                try:
                    return ast.literal_eval(value)
                except (SyntaxError, ValueError):
                    return value
        return value

    def gold_indices(self, doc: Mapping, choices: Sequence[str]) -> list[int]:
        """Multiple choice: the index (or indices, for several right answers) of the correct choices."""
        target = self.target(doc)
        items = target if isinstance(target, (list, tuple)) else [target]
        gold = []
        for t in items:
            if isinstance(t, bool) or not isinstance(t, (int, str)):
                raise LmlabError(f"{self.source}: doc_to_target must give an index or a choice, got {t!r}")
            if isinstance(t, str):
                if t not in choices:
                    raise LmlabError(f"{self.source}: target {t!r} is not one of the choices {choices}")
                t = choices.index(t)
            if not 0 <= t < len(choices):
                raise LmlabError(f"{self.source}: target index {t} out of range for {len(choices)} choices")
            gold.append(t)
        return gold

    def references(self, doc: Mapping) -> list[str]:
        """Generation: the reference string(s) a prediction is scored against."""
        target = self.target(doc)
        if self.doc_to_choice is not None and isinstance(target, int):
            target = self.choices(doc)[target]
        refs = target if isinstance(target, (list, tuple)) else [target]
        return [str(r) for r in refs]

    def _answer_text(self, doc: Mapping) -> str:
        target = self.target(doc)
        if isinstance(target, int) and self.doc_to_choice is not None:
            return self.choices(doc)[target]
        if isinstance(target, (list, tuple)):
            target = target[0]
            if isinstance(target, int) and self.doc_to_choice is not None:
                return self.choices(doc)[target]
        return str(target)

    def contexts(self, docs: Sequence[Mapping], num_fewshot: int | None = None, seed: int | None = None) -> list[str]:
        """The prompt of every document in ``docs`` (evaluated in this order), with its few-shot examples."""
        k = self.num_fewshot if num_fewshot is None else num_fewshot
        rnd = random.Random(self.fewshot_seed if seed is None else seed)
        pool = list(self.fewshot_docs if self.fewshot_docs is not None else self.docs)
        same_pool = self.fewshot_docs is None
        if k > 0 and len(pool) < k + (1 if same_pool else 0):
            raise LmlabError(f"{self.source}: {k}-shot needs at least {k + int(same_pool)} few-shot documents, "
                             f"have {len(pool)}")
        out = []
        for doc in docs:
            parts = [self._apply(self.description, doc, "description") if self.description else ""]
            if k > 0:
                if same_pool:  # lm-eval: sample n + 1, drop the evaluated document, keep n
                    shots = [d for d in rnd.sample(pool, k + 1) if d != doc][:k]
                    if len(shots) < k:
                        shots = rnd.sample([d for d in pool if d != doc], k)
                else:
                    shots = rnd.sample(pool, k)
                for s in shots:
                    parts.append(self.text(s) + self.target_delimiter + self._answer_text(s) + self.fewshot_delimiter)
            parts.append(self.text(doc))
            out.append("".join(parts))
        return out

    def config(self) -> dict:
        """The spec as plain data (for results.json): every field except the documents themselves."""
        skip = {"docs", "fewshot_docs", "_compiled"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}



def read_jsonl(path: str | Path, where: str = "") -> list[dict]:
    """Documents from a JSON Lines file (or a JSON file holding a list of objects)."""
    p = Path(path)
    prefix = f"{where}: " if where else ""
    if not p.is_file():
        raise LmlabError(f"{prefix}documents file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LmlabError(f"{p}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if not isinstance(data, list):
            raise LmlabError(f"{p}: a .json documents file must hold a list of objects")
        docs = data
    else:
        docs = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LmlabError(f"{p}:{lineno}: invalid JSON: {err.msg}") from None
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise LmlabError(f"{p}: document {i + 1} must be a JSON object, got {type(d).__name__}")
    return docs
