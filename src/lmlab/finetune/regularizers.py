"""Old import path, kept for existing code: each method now has its own module, named after it
(``ewc``, ``hierarchical``, ``migu``, ``interpolation``, ``replay``)."""

from lmlab.finetune.ewc import EWC, EWCConfig, fisher_diagonal
from lmlab.finetune.hierarchical import HierarchicalImportance, HLERConfig, record_si_importance
from lmlab.finetune.interpolation import InterpolationConfig, interpolate_weights
from lmlab.finetune.migu import MIGU, MIGUConfig
from lmlab.finetune.replay import ReplayConfig, mix_replay

__all__ = ["EWC", "EWCConfig", "HLERConfig", "HierarchicalImportance", "InterpolationConfig", "MIGU", "MIGUConfig",
           "ReplayConfig", "fisher_diagonal", "interpolate_weights", "mix_replay", "record_si_importance"]
