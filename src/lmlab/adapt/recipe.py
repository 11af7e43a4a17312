"""The ``lmlab adapt-vocab`` recipe: a YAML file (configs/adapt-*.yaml) < ``--set key=value`` < command-line flags.

Why through ``lmlab.config_io``: one loader checks every key against the dataclass and coerces values through
their annotations, so a recipe's ``temperature: 5e-2`` (a *string* under YAML 1.1) is a float here as in every
other command.  Paths in a recipe are relative to the recipe file (as in ``lmlab finetune``); paths given on the
command line or with ``--set`` are relative to the working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.adapt.wechsel import WechselConfig
from lmlab.errors import LmlabError

PATH_FIELDS = ("src", "out", "extend", "target_tokenizer", "dictionary")
PATH_LIST_FIELDS = ("source_text", "target_text")


@dataclass
class AdaptVocabRecipe:
    """One adaptation: ``extend`` (a file of new tokens) or ``target_tokenizer`` (a tokenizer directory to swap
    to), never both.  ``init``: extend subword_mean (default) | mean | random; swap wechsel (default) | mean |
    random.  ``copy_overlap``: copy the rows of tokens both vocabularies share (FOCUS-style); false is pure
    WECHSEL as in the paper.  ``wechsel``: k, temperature (the paper's 10 and 0.1) and the static embeddings."""

    src: str | None = None
    out: str | None = None
    extend: str | None = None
    target_tokenizer: str | None = None
    init: str | None = None
    dictionary: str | None = None
    source_text: list[str] = field(default_factory=list)
    target_text: list[str] = field(default_factory=list)
    text_field: str = "text"
    copy_overlap: bool = True
    wechsel: WechselConfig = field(default_factory=WechselConfig)
    seed: int = 0

    def check(self) -> AdaptVocabRecipe:
        for name in ("src", "out"):
            if not getattr(self, name):
                raise LmlabError(f"adapt-vocab: no {name.upper()} (give it on the command line or as '{name}:' "
                                 "in the --config recipe)")
        if bool(self.extend) == bool(self.target_tokenizer):
            raise LmlabError("adapt-vocab: give exactly one of --extend FILE / --target-tokenizer DIR "
                             "('extend:' / 'target_tokenizer:' in a recipe)")
        return self


def _relative_to(base: Path, value: str) -> str:
    p = Path(value).expanduser()
    return value if p.is_absolute() else os.path.normpath(base / p)


def load_recipe(config: str | os.PathLike | None, sets: list[str], flags: dict) -> AdaptVocabRecipe:
    """The recipe from ``config`` (may be None), then ``--set`` overrides, then the explicitly given ``flags``
    (dotted keys, e.g. ``{"wechsel.neighbors": 5}``); each layer validated on its own so an error names it."""
    from lmlab.config_io import deep_merge, overrides_to_dict, parse_fields, read_yaml

    def layer(data: dict, source: str) -> dict:
        parse_fields(AdaptVocabRecipe, data, "", source)  # checked here so an error names its layer
        return data  # merged as given: a partial 'wechsel:' section must not reset the fields it leaves out

    merged: dict = {}
    if config is not None:
        data = read_yaml(config)
        base = Path(config).resolve().parent
        for name in PATH_FIELDS:
            if isinstance(data.get(name), str) and data[name]:
                data[name] = _relative_to(base, data[name])
        for name in PATH_LIST_FIELDS:
            if isinstance(data.get(name), str):
                data[name] = [data[name]]
            if isinstance(data.get(name), list):
                data[name] = [_relative_to(base, v) if isinstance(v, str) else v for v in data[name]]
        merged = layer(data, str(config))
    merged = deep_merge(merged, layer(overrides_to_dict(sets), "--set"))
    nested: dict = {}
    for key, value in flags.items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    merged = deep_merge(merged, layer(nested, "command line"))
    return AdaptVocabRecipe(**parse_fields(AdaptVocabRecipe, merged, "", "adapt-vocab")).check()
