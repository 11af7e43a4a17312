"""A deterministic synthetic world with exact ground truth, for verifying methods on tiny models.

Why: every lmlab method (fact editing, steering, guided decoding, DPO, LoRA, KV-cache compression,
vocabulary adaptation, bias metrics) checks its paper's claim on this world with a model trained on CPU
in minutes, so the world is small-vocabulary, regular, and every label is known exactly.

    world = build_world(WorldConfig.quickstart())
    docs = world.training_documents()          # list[str] to train a tokenizer and a model on
    probe = world.probes("train")[0]           # prompt "Zarek Vell was born in", answer " Mirova"
    world.lookup("Zarek Vell", "born_in")      # "Mirova"
    world.write("runs/world")                  # JSONL splits + ground-truth tables

Answers always start with a space and prompts never end with one (see :mod:`.schema`).
"""

from lmlab.data.world.attributes import AttributeExample, label_formality, label_politeness, label_sentiment
from lmlab.data.world.config import WorldConfig
from lmlab.data.world.languages import SyntheticLanguage, tokenize
from lmlab.data.world.loading import load_config, load_world
from lmlab.data.world.longcontext import LongContextTask
from lmlab.data.world.schema import Entity, Fact, Probe, Relation, TwoHopRelation
from lmlab.data.world.templates import RELATIONS, TWO_HOP_RELATIONS
from lmlab.data.world.world import World, build_world

__all__ = [
    "RELATIONS",
    "TWO_HOP_RELATIONS",
    "AttributeExample",
    "Entity",
    "Fact",
    "LongContextTask",
    "Probe",
    "Relation",
    "SyntheticLanguage",
    "TwoHopRelation",
    "World",
    "WorldConfig",
    "build_world",
    "label_formality",
    "label_politeness",
    "label_sentiment",
    "load_config",
    "load_world",
    "tokenize",
]
