"""Re-score some figures of every shipped reference record after the world's probes or tasks changed.

Two re-measurements, each with its reason (the weights and every other figure of a record stay as they are):

* ``heldout`` (session 13): ``heldout_paraphrase_recall``, after the held-out paraphrase templates were replaced by
  recombinations of training words (docs/world.md);
* ``retrieval`` (session 15): every ``kv_retrieval/...`` cell and ``tokens/<n>``, after a key-value list longer than
  the world has names spreads its invented keys over the list instead of ending in them (so depth ~0.8+ no longer
  always asks an invented key), and the new ``kv_retrieval_invented/<tokens>`` figure;
* ``long_context`` (session 15): every long-context figure of ``quality`` (key-value, needle, invented keys,
  ``tokens/<n>``) with 16 tasks a cell instead of 4 (``world_quality.N_PER_CELL``; ``quality_options`` says so).

Both ``quality`` and, for the world references, ``quality_subset`` are measured with the options the build used
(``lmlab.reference.build_world_reference``, ``lmlab.train.world_quality``). Each figure's earlier value is kept in
the record's ``remeasured`` section with the reason (a second run keeps the first "before"); each record is
rewritten atomically (``lmlab.io.atomic.atomic_write_json``).

    PYTHONPATH=src python scripts/remeasure_records.py --what heldout [--names world-llama-2m-1k,...] [--dry-run]
    PYTHONPATH=src python scripts/remeasure_records.py --what retrieval
    PYTHONPATH=src python scripts/remeasure_records.py --what long_context
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from lmlab.data.recall import recall
from lmlab.io.atomic import atomic_write_json
from lmlab.reference import RECORD_FILE, REFERENCES, load_reference, resolve
from lmlab.train.world_quality import CONTEXT_TOKENS, N_PER_CELL, evenly_spaced, long_context_scores

REASONS = {
    "heldout": "session 13: held-out paraphrase templates replaced by recombinations of training words "
               "(13 of the 18 old ones used a word no training text contains)",
    "retrieval": "session 15: key-value lists longer than the world has names spread their invented keys over the "
                 "list (they ended it, so depth ~0.8+ always asked an invented key); kv_retrieval_invented added",
    "long_context": f"session 15: {N_PER_CELL} long-context tasks a cell instead of 4",
}
LONG_CONTEXT = ("kv_retrieval", "needle", "tokens/")  # the figures of world_quality.long_context_scores


def _heldout(ref, section: str, options: dict) -> dict[str, float]:
    if "heldout_paraphrase_recall" not in ref.record.get(section, {}):
        return {}
    probes = evenly_spaced(ref.world.probes("heldout"), options.get("subset"))
    return {"heldout_paraphrase_recall": recall(ref.model, ref.tokenizer, probes)}


def _long_context_figures(ref, section: str, options: dict, kinds: tuple[str, ...]) -> dict[str, float]:
    if not any(key.startswith("kv_retrieval/") for key in ref.record.get(section, {})):
        return {}
    with torch.inference_mode():
        scores = long_context_scores(ref.model, ref.tokenizer, ref.world,
                                     lengths=tuple(options.get("context_tokens", CONTEXT_TOKENS)),
                                     n_per_cell=options.get("n_per_cell", 4), kinds=kinds)
    # tokens/<n>: the mean prompt length, measured on the key-value tasks at depth 0.5
    return {key: value for key, value in scores.items() if key.startswith(LONG_CONTEXT)}


def _retrieval(ref, section: str, options: dict) -> dict[str, float]:
    return _long_context_figures(ref, section, options, ("kv_retrieval",))


def _long_context(ref, section: str, options: dict) -> dict[str, float]:
    if section != "quality":  # the test subset keeps its 2 tasks a cell
        return {}
    return _long_context_figures(ref, section, {**options, "n_per_cell": N_PER_CELL}, ("kv_retrieval", "needle"))


MEASURES = {"heldout": _heldout, "retrieval": _retrieval, "long_context": _long_context}


def _upgrade(remeasured: dict) -> dict:
    """Session 13's records kept one re-measurement, ``{"reason": ..., figure: {section: ...}}``; now each figure
    carries its own reason: ``{figure: {"reason": ..., section: {"before": ..., "after": ...}}}``."""
    if "reason" not in remeasured:
        return remeasured
    reason = remeasured["reason"]
    return {key: {"reason": reason, **sections} for key, sections in remeasured.items() if key != "reason"}


def remeasure(name: str, what: str) -> tuple[dict, list[str]]:
    """The record of ``name`` with the ``what`` figures measured again, and one line per changed figure."""
    ref = load_reference(name)
    record = copy.deepcopy(ref.record)
    remeasured = _upgrade(record.get("remeasured", {}))
    lines, measured = [], False
    for section in ("quality", "quality_subset"):
        if section not in record:
            continue
        options = record.get(f"{section}_options", {})  # the full evaluation's: 4 tasks a cell unless said
        figures = MEASURES[what](ref, section, options)
        measured = measured or bool(figures)
        for key, new in figures.items():
            if key not in remeasured and record[section].get(key) == new:
                continue  # unchanged (a list the world's names suffice for is the same task as before)
            entry = remeasured.setdefault(key, {})
            earlier = entry.get("reason")  # an earlier re-measurement of the same figure keeps its reason
            entry["reason"] = REASONS[what] if earlier in (None, REASONS[what]) else f"{earlier}; then {REASONS[what]}"
            before = entry[section]["before"] if section in entry else record[section].get(key)
            entry[section] = {"before": before, "after": new}
            record[section][key] = new
            shown = "absent" if before is None else f"{before:.1%}"
            lines.append(f"{name} {section} {key}: {before} -> {new}" if key.startswith("tokens/") else
                         f"{name} {section} {key}: {shown} -> {new:.1%}")
    if remeasured:
        record["remeasured"] = remeasured
    if what == "long_context" and measured:
        record["quality_options"] = {"n_per_cell": N_PER_CELL}
    return record, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", required=True, choices=sorted(MEASURES), help="which figures to measure again")
    p.add_argument("--names", default=",".join(REFERENCES), help="comma-separated shipped references")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="print the new figures, write nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names.split(",")
    unknown = [name for name in names if name not in REFERENCES]
    if unknown:
        print(f"error: --names: unknown reference {unknown[0]!r} (shipped: {', '.join(REFERENCES)})", file=sys.stderr)
        return 2
    for name in names:
        record, lines = remeasure(name, args.what)
        print("\n".join(lines) or f"{name}: no {args.what} figure changed", flush=True)
        if not args.dry_run:
            atomic_write_json(resolve(name) / RECORD_FILE, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
