"""Evaluation: tasks in YAML + JSONL, lm-eval-compatible scoring and metrics, reports, lm-eval interop.

    from lmlab.eval import evaluate, load_task, write_report
    results = evaluate(model, tokenizer, ["tasks/capitals.yaml"], num_fewshot=2)
    write_report(results, "runs/eval")

Modules: ``task_spec`` (the Task: templates, few-shot contexts, requests), ``tasks`` (YAML loading), ``scoring`` (log-likelihoods, rolling
windows, generation), ``metrics``, ``runner`` (``evaluate``), ``report``, ``formats`` (TruthfulQA, CMoralEval,
NormAd, IrokoBench from local files), ``lm_eval_adapter`` (``LmlabLM``; needs ``lm_eval``). Names are
imported lazily, so ``import lmlab.eval`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Task": "lmlab.eval.tasks",
    "load_task": "lmlab.eval.tasks",
    "load_tasks": "lmlab.eval.tasks",
    "task_from_dict": "lmlab.eval.tasks",
    "evaluate": "lmlab.eval.runner",
    "model_fingerprint": "lmlab.eval.runner",
    "write_report": "lmlab.eval.report",
    "load_format": "lmlab.eval.formats",
    "METRICS": "lmlab.eval.metrics",
    "LmlabLM": "lmlab.eval.lm_eval_adapter",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmlab.eval' has no attribute {name!r}")


__all__ = list(_EXPORTS)
