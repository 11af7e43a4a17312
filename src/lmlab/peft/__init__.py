"""Parameter-efficient fine-tuning: LoRA, series / parallel bottleneck adapters, BA-LoRA, FLoRA, peft I/O.

Every method is a config dataclass registered by a unique lowercase name; ``add_adapter(model, config)``
attaches it to the modules its ``target_modules`` select. Base modules keep their class, parameters and
state-dict names: adapters live in a child ``adapters`` ModuleDict of each adapted module and act through
a forward hook (see ``lmlab.peft.inject``)::

    from lmlab.peft import LoraConfig, add_adapter, merge_adapter, save_adapter
    add_adapter(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
    ...train...
    save_adapter(model, "out/adapter")          # peft format: PeftModel.from_pretrained loads it
    merge_adapter(model)                        # W += scaling * B @ A, exactly undone by unmerge_adapter

Registered methods (``lmlab.peft.registry``): ``lora``, ``balora`` (LoRA + BA-LoRA's regularisers),
``series_adapter``, ``parallel_adapter``. FLoRA (``flora_stack``) is an operation on LoRAs, not a method of its own.
"""

from __future__ import annotations

from lmlab.peft.adapters import BottleneckAdapter, ParallelAdapterConfig, SeriesAdapterConfig
from lmlab.peft.balora import BALoRAConfig, BALoRAObjective, balora_regularizer, balora_terms
from lmlab.peft.flora import LoraFactors, fedavg_loras, flora_merge, flora_stack, stack_loras
from lmlab.peft.inject import (
    AdapterConfig,
    active_adapter,
    adapter_configs,
    adapter_state_dict,
    add_adapter,
    adapted_modules,
    count_parameters,
    delete_adapter,
    disable_adapters,
    list_adapters,
    mark_trainable,
    merge_adapter,
    merge_and_unload,
    require_adapter,
    set_adapter,
    unmerge_adapter,
)
from lmlab.peft.lora import LoraAdapter, LoraConfig
from lmlab.peft.peft_io import load_adapter, peft_adapter_config, save_adapter
from lmlab.peft.registry import available_methods, config_from_dict, get_method, register_method

__all__ = [
    "register_method", "available_methods", "get_method", "config_from_dict",
    "AdapterConfig", "LoraConfig", "LoraAdapter", "SeriesAdapterConfig", "ParallelAdapterConfig",
    "BottleneckAdapter", "BALoRAConfig", "BALoRAObjective",
    "add_adapter", "set_adapter", "active_adapter", "list_adapters", "delete_adapter", "disable_adapters",
    "merge_adapter", "unmerge_adapter", "merge_and_unload", "mark_trainable", "count_parameters",
    "adapter_state_dict", "adapted_modules", "adapter_configs", "require_adapter",
    "save_adapter", "load_adapter", "peft_adapter_config",
    "LoraFactors", "stack_loras", "fedavg_loras", "flora_stack", "flora_merge",
    "balora_regularizer", "balora_terms",
]
