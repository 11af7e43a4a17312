"""Evaluation tasks from YAML specs (lm-evaluation-harness field names) over a JSONL file of documents::

    name: capitals
    documents: capitals.jsonl          # relative to this YAML
    output_type: multiple_choice       # | generate_until | loglikelihood_rolling
    doc_to_text: "Q: What is the capital of {{country}}?\\nA:"
    doc_to_choice: "{{options}}"       # renders a Python list literal, or a YAML list of strings
    doc_to_target: "{{answer}}"        # an index (int or digits), a choice string, or a list of indices
    metrics: [acc, acc_norm]

or ``format: truthfulqa_mc1`` + ``documents: file`` for a published benchmark (:mod:`lmlab.eval.formats`).
The Task and its template semantics live in :mod:`lmlab.eval.task_spec` (re-exported here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError
from lmlab.eval.formats import load_format
from lmlab.eval.task_spec import REQUIRED, Task, read_jsonl


# ---------------------------------------------------------------------------------------------- loading
TASK_FIELDS = {f.name for f in dataclasses.fields(Task)} - {"docs", "fewshot_docs", "source", "_compiled"}
# lm-eval spellings we accept as the same field
ALIASES = {"task": "name", "metric_list": "metrics"}


def _metric_names(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LmlabError(f"{where}: field 'metrics' must be a list of metric names")
    names = []
    for m in value:
        if isinstance(m, Mapping) and "metric" in m:  # lm-eval's metric_list entries
            m = m["metric"]
        if not isinstance(m, str):
            raise LmlabError(f"{where}: field 'metrics' entries must be metric names, got {m!r}")
        names.append(m)
    return names


def task_from_dict(raw: Mapping, base_dir: str | Path = ".", source: str = "<dict>") -> Task:
    """A Task from a YAML-shaped mapping; ``documents`` paths are resolved against ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise LmlabError(f"{source}: a task file must be a mapping of fields")
    if "format" in raw:
        return _task_from_format(raw, Path(base_dir), source)
    data = {}
    for key, value in raw.items():
        key = ALIASES.get(key, key)
        if key not in TASK_FIELDS:
            raise LmlabError(f"{source}: unknown field {key!r} (known: {', '.join(sorted(TASK_FIELDS))})")
        data[key] = value
    for key in REQUIRED + ("documents",):
        if data.get(key) in (None, ""):
            raise LmlabError(f"{source}: missing required field {key!r}")
    base = Path(base_dir)
    docs_path = (base / str(data["documents"])).resolve()
    data["documents"] = str(docs_path)
    docs = read_jsonl(docs_path, source)
    fewshot = None
    if data.get("fewshot_documents"):
        fs_path = (base / str(data["fewshot_documents"])).resolve()
        data["fewshot_documents"] = str(fs_path)
        fewshot = read_jsonl(fs_path, source)
    data["metrics"] = _metric_names(data.get("metrics"), source)
    for key in ("num_fewshot", "fewshot_seed"):
        if key in data and isinstance(data[key], str) and data[key].strip().lstrip("-").isdigit():
            data[key] = int(data[key])
    data.setdefault("generation_kwargs", {})
    if data["generation_kwargs"] is None:
        data["generation_kwargs"] = {}
    for key in ("description", "target_delimiter", "fewshot_delimiter"):
        if key in data and data[key] is None:
            data.pop(key)
    return Task(docs=docs, fewshot_docs=fewshot, source=source, **data)


FORMAT_OVERRIDES = ("num_fewshot", "fewshot_seed", "metrics", "description", "target_delimiter",
                    "fewshot_delimiter", "generation_kwargs")


def _task_from_format(raw: Mapping, base: Path, source: str) -> Task:
    """``format: truthfulqa_mc1`` + ``documents: file`` (+ ``format_options``, ``name`` and the overridable
    fields): a published benchmark read by ``lmlab.eval.formats``."""
    allowed = {"format", "documents", "format_options", "name", *FORMAT_OVERRIDES}
    for key in raw:
        if key not in allowed:
            raise LmlabError(f"{source}: unknown field {key!r} for a 'format' task (known: {', '.join(sorted(allowed))})")
    if not raw.get("documents"):
        raise LmlabError(f"{source}: missing required field 'documents'")
    options = raw.get("format_options") or {}
    if not isinstance(options, Mapping):
        raise LmlabError(f"{source}: field 'format_options' must be a mapping")
    options = dict(options)
    if raw.get("name"):
        options["name"] = raw["name"]
    path = (base / str(raw["documents"])).resolve()
    task = load_format(str(raw["format"]), path, **options)
    for key in FORMAT_OVERRIDES:
        if key in raw:
            setattr(task, key, _metric_names(raw[key], source) if key == "metrics" else raw[key])
    task.source = source
    task.validate()
    return task


def load_task(path: str | Path) -> Task:
    """Read a task YAML (one task per file) and its documents; every problem is a one-line LmlabError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LmlabError(f"task file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise LmlabError(f"{p}:{line} invalid YAML: {getattr(err, 'problem', err)}") from None
    return task_from_dict(raw, base_dir=p.parent, source=str(p))


def load_tasks(specs: Sequence[str | Path | Task]) -> list[Task]:
    """Tasks from YAML paths (or Task objects, passed through); task names must be unique."""
    tasks = [s if isinstance(s, Task) else load_task(s) for s in specs]
    seen: dict[str, str] = {}
    for t in tasks:
        if t.name in seen:
            raise LmlabError(f"{t.source}: task name {t.name!r} already used by {seen[t.name]}")
        seen[t.name] = t.source
    return tasks
