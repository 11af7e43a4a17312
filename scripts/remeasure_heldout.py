"""Re-score the held-out paraphrase figure of every shipped reference record after the world's held-out
templates changed (session 13: templates that recombine training words, docs/world.md).

The weights and everything else in a record stay as they are; ``quality["heldout_paraphrase_recall"]`` and, for
the world references, ``quality_subset["heldout_paraphrase_recall"]`` are measured again with the probe
selection the build used (``lmlab.reference.build_world_reference``, ``lmlab.train.world_quality``), and the old
values are kept under ``remeasured`` so the record says what changed and why. Each record is rewritten
atomically (``lmlab.io.atomic.atomic_write_json``).

    PYTHONPATH=src python scripts/remeasure_heldout.py [--names world-llama-0.9m,world-llama-2m-1k] [--dry-run]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from lmlab.data.recall import recall
from lmlab.io.atomic import atomic_write_json
from lmlab.reference import RECORD_FILE, REFERENCES, load_reference, resolve
from lmlab.train.world_quality import evenly_spaced

KEY = "heldout_paraphrase_recall"
REASON = ("session 13: held-out paraphrase templates replaced by recombinations of training words "
          "(13 of the 18 old ones used a word no training text contains)")


def remeasure(name: str) -> dict:
    """The record of ``name`` with its held-out paraphrase figures measured again (old ones under ``remeasured``)."""
    ref = load_reference(name)
    record = copy.deepcopy(ref.record)
    probes = ref.world.probes("heldout")
    changes = {}
    for section in ("quality", "quality_subset"):
        if KEY not in record.get(section, {}):
            continue
        subset = record.get("quality_subset_options", {}).get("subset") if section == "quality_subset" else None
        new = recall(ref.model, ref.tokenizer, evenly_spaced(probes, subset))
        earlier = record.get("remeasured", {}).get(KEY, {}).get(section)  # a second run keeps the first "before"
        changes[section] = {"before": earlier["before"] if earlier else record[section][KEY], "after": new}
        record[section][KEY] = new
    record["remeasured"] = {"reason": REASON, KEY: changes}
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", default=",".join(REFERENCES), help="comma-separated shipped references")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="print the new figures, write nothing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.names.split(","):
        if name not in REFERENCES:
            print(f"error: --names: unknown reference {name!r} (shipped: {', '.join(REFERENCES)})", file=sys.stderr)
            return 2
        record = remeasure(name)
        for section, change in record["remeasured"][KEY].items():
            print(f"{name} {section}: {change['before']:.1%} -> {change['after']:.1%}")
        if not args.dry_run:
            atomic_write_json(resolve(name) / RECORD_FILE, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
