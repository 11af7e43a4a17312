"""Write a world to disk (atomically, byte-reproducibly) (loading it back is :mod:`loading`).

Why: experiments consume the world as files, and two runs with the same seed must produce identical
bytes (JSON with sorted keys, fixed separators, UTF-8, no timestamps, deterministic order), so a
directory's hash identifies its world. The directory is built in a temporary sibling and renamed
into place, so a crash never leaves a half-written world behind.

Layout (JSONL = one JSON object per line):
    train.jsonl           {"text": document}                 (World.training_documents())
    probes_train.jsonl    Probe.to_dict()                    probes_heldout.jsonl, two_hop.jsonl likewise
    attributes.jsonl      AttributeExample.to_dict()
    preferences.jsonl     pair dict + {"split": "train"|"heldout"}
    long_context.jsonl    LongContextTask.to_dict() + {"n_tokens_approx": L}, for L in long_context_lengths
    parallel.jsonl        World.parallel_sentences() records
    counterfactual.jsonl  World.counterfactual_pairs() records
    corpus.jsonl          CorpusDocument.to_dict(): every training text with its kind and content split
    qa_train.jsonl        Probe.to_dict() for World.qa_probes("train")   qa_heldout.jsonl likewise
    qa_extra.jsonl        Probe.to_dict() for World.qa_probes("extra"): augmentation forms, not in the corpus
    facts_extra.jsonl     {"text", "split"}: World.fact_extra_documents(None), augmentation templates, not in the corpus
    dialogues.jsonl       Dialogue.to_dict()
    attribute_text.jsonl  AttributeText.to_dict()
    sentiment_contrasts.jsonl  AttributeText.to_dict() + {"split"}: World.sentiment_contrast_texts(None), not in the corpus
    sentiment_contrast_dialogues.jsonl  Dialogue.to_dict() + {"split"}: World.sentiment_contrast_dialogues(None), not in the corpus
    style_contrast_dialogues.jsonl  Dialogue.to_dict() + {"split"}: World.style_contrast_dialogues(None), not in the corpus
    edits.jsonl           World.edit_requests() records
    facts.json            {"relations": {...}, "two_hop_relations": {...}, "facts": [...]}
    entities.json         {type: [Entity.to_dict()]}
    bias_truth.json       World.bias_truth
    languages.json        {"family": ..., "languages": {code: SyntheticLanguage.to_dict()}}
    world_config.json     WorldConfig.to_dict()
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.io.output_paths import umask_mode


def dumps(obj: object) -> str:
    """Canonical JSON: sorted keys, compact separators, non-ASCII kept (UTF-8 on disk)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _write_jsonl(path: Path, records: Iterable[object]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(dumps(record) + "\n")


def _write_json(path: Path, obj: object) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n")


def _files(world) -> dict[str, tuple[str, object]]:
    """file name -> ("jsonl" | "json", content)."""
    config = world.config
    long_context = [
        {**task.to_dict(), "n_tokens_approx": length}
        for length in config.long_context_lengths
        for task in world.long_context_tasks(length, config.n_long_context_tasks, seed=config.seed)
    ]
    prefs = [{**pair, "split": split} for split in ("train", "heldout") for pair in world.preference_pairs(split)]
    return {
        "train.jsonl": ("jsonl", ({"text": doc} for doc in world.training_documents())),
        "probes_train.jsonl": ("jsonl", (p.to_dict() for p in world.probes("train"))),
        "probes_heldout.jsonl": ("jsonl", (p.to_dict() for p in world.probes("heldout"))),
        "two_hop.jsonl": ("jsonl", (p.to_dict() for p in world.two_hop_probes())),
        "attributes.jsonl": ("jsonl", (e.to_dict() for e in world.attribute_examples())),
        "preferences.jsonl": ("jsonl", prefs),
        "long_context.jsonl": ("jsonl", long_context),
        "parallel.jsonl": ("jsonl", world.parallel_sentences()),
        "counterfactual.jsonl": ("jsonl", world.counterfactual_pairs()),
        "corpus.jsonl": ("jsonl", (d.to_dict() for d in world.corpus())),
        "qa_train.jsonl": ("jsonl", (p.to_dict() for p in world.qa_probes("train"))),
        "qa_heldout.jsonl": ("jsonl", (p.to_dict() for p in world.qa_probes("heldout"))),
        "qa_extra.jsonl": ("jsonl", (p.to_dict() for p in world.qa_probes("extra"))),
        "facts_extra.jsonl": ("jsonl", ({"text": d, "split": split} for split in ("train", "validation")
                                        for d in world.fact_extra_documents(split))),
        "dialogues.jsonl": ("jsonl", (d.to_dict() for d in world.dialogues())),
        "attribute_text.jsonl": ("jsonl", (t.to_dict() for t in world.attribute_texts())),
        "sentiment_contrasts.jsonl": ("jsonl", ({**t.to_dict(), "split": split} for split in ("train", "validation")
                                                for t in world.sentiment_contrast_texts(split))),
        "sentiment_contrast_dialogues.jsonl": ("jsonl", ({**d.to_dict(), "split": split}
                                                         for split in ("train", "validation")
                                                         for d in world.sentiment_contrast_dialogues(split))),
        "style_contrast_dialogues.jsonl": ("jsonl", ({**d.to_dict(), "split": split}
                                                     for split in ("train", "validation")
                                                     for d in world.style_contrast_dialogues(split))),
        "edits.jsonl": ("jsonl", world.edit_requests()),
        "facts.json": ("json", {
            "relations": {name: r.to_dict() for name, r in world.relations.items()},
            "two_hop_relations": {name: r.to_dict() for name, r in world.two_hop_relations.items()},
            "facts": [f.to_dict() for f in world.facts],
            **({"edits": [f.to_dict() for f in world.edits]} if world.edits else {}),
        }),
        "entities.json": ("json", {kind: [e.to_dict() for e in group] for kind, group in world.entities.items()}),
        "bias_truth.json": ("json", world.bias_truth),
        "languages.json": ("json", {"family": world.language_family,
                                    "languages": {c: lang.to_dict() for c, lang in world.languages.items()}}),
        "world_config.json": ("json", config.to_dict()),
    }


def write_world(world, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``world`` into ``directory``; a non-empty existing directory needs ``overwrite=True``."""
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise LmlabError(f"directory: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise LmlabError(f"directory: {target} is not empty (pass overwrite=True to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(umask_mode(0o777))  # mkdtemp makes 0700; the world is as readable as any directory the user makes
        for name, (kind, content) in _files(world).items():
            (_write_jsonl if kind == "jsonl" else _write_json)(tmp / name, content)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first and deleted after."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "world")
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old / "world", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
