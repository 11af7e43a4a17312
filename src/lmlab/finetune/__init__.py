"""Fine-tuning: SFT on chat data (assistant-only loss, packing), Half Fine-Tuning, and forgetting mitigation
(EWC, hierarchical importance, MIGU, weight interpolation, replay) and LS-LLaMA classification heads.
Importing this package registers the ``sft``, ``sft_regularized`` and ``classify`` objectives.

    from lmlab.finetune import SFTData, HalfFineTuning, HFTConfig, RegularizedObjective, SFTObjective
    data = SFTData(conversations, tokenizer, block_size=128)
    obj = RegularizedObjective(SFTObjective(), hooks=[HalfFineTuning(HFTConfig(stage_steps=50))])
    Trainer(model, cfg, data, objective=obj).fit()
"""

from lmlab.finetune.hft import HalfFineTuning, HFTConfig, hft_groups
from lmlab.finetune.objectives import RegularizedObjective, SFTObjective, sft_token_losses
from lmlab.finetune.ewc import EWC, EWCConfig, fisher_diagonal
from lmlab.finetune.hierarchical import HierarchicalImportance, HLERConfig, record_si_importance
from lmlab.finetune.interpolation import InterpolationConfig, interpolate_weights
from lmlab.finetune.migu import MIGU, MIGUConfig
from lmlab.finetune.replay import ReplayConfig, mix_replay
from lmlab.finetune.classify import ClassificationObjective, ClassifierConfig, SequenceClassifier
from lmlab.finetune.sft import (SFTData, SFTExample, load_chat_jsonl, pack_examples, tokenize_conversation,
                                validate_conversation)

__all__ = ["ClassificationObjective", "ClassifierConfig", "EWC", "EWCConfig", "HLERConfig",
           "HierarchicalImportance", "SequenceClassifier", "record_si_importance", "HFTConfig", "HalfFineTuning", "InterpolationConfig", "MIGU", "MIGUConfig",
           "RegularizedObjective", "ReplayConfig", "SFTData", "SFTExample", "SFTObjective", "fisher_diagonal",
           "hft_groups", "interpolate_weights", "load_chat_jsonl", "mix_replay", "pack_examples",
           "sft_token_losses", "tokenize_conversation", "validate_conversation"]
