"""Fine-tuning: SFT on chat data (assistant-only loss, packing), Half Fine-Tuning, forgetting mitigation (one
module per method: ``ewc``, ``hierarchical``, ``migu``, ``interpolation``, ``replay``) and LS-LLaMA
classification heads. The ``sft``, ``sft_regularized`` and ``classify`` objectives are registered by name in
``lmlab.train.objective_registry``; recipe methods (``methods: {hft: {...}}``) in ``method_registry``.

    from lmlab.finetune import SFTData, HalfFineTuning, HFTConfig, SFTObjective
    data = SFTData(conversations, tokenizer, block_size=128)
    hft = HalfFineTuning(HFTConfig(stage_steps=50))
    Trainer(model, cfg, data, objective=SFTObjective(), callbacks=[hft]).fit()
"""

from lmlab.finetune.classify import ClassificationObjective, ClassifierConfig, SequenceClassifier
from lmlab.finetune.ewc import EWC, EWCConfig, fisher_diagonal
from lmlab.finetune.hft import HalfFineTuning, HFTConfig, hft_groups
from lmlab.finetune.hierarchical import HierarchicalImportance, HLERConfig, record_si_importance
from lmlab.finetune.interpolation import InterpolationConfig, WeightInterpolation, interpolate_weights
from lmlab.finetune.method_registry import available_finetune_methods, register_finetune_method
from lmlab.finetune.migu import MIGU, MIGUConfig
from lmlab.finetune.objectives import RegularizedObjective, SFTObjective, sft_token_losses
from lmlab.finetune.replay import ReplayConfig, mix_replay
from lmlab.finetune.sft import (SFTData, SFTExample, load_chat_jsonl, pack_examples, tokenize_conversation,
                                validate_conversation)

__all__ = ["ClassificationObjective", "ClassifierConfig", "EWC", "EWCConfig", "HFTConfig", "HLERConfig",
           "HalfFineTuning", "HierarchicalImportance", "InterpolationConfig", "MIGU", "MIGUConfig",
           "RegularizedObjective", "ReplayConfig", "SFTData", "SFTExample", "SFTObjective", "SequenceClassifier",
           "WeightInterpolation", "available_finetune_methods", "fisher_diagonal", "hft_groups",
           "interpolate_weights", "load_chat_jsonl", "mix_replay", "pack_examples", "record_si_importance",
           "register_finetune_method", "sft_token_losses", "tokenize_conversation", "validate_conversation"]
