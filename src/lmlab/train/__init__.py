"""Training: one plain loop with pluggable objectives, YAML recipes, resumable checkpoints, DDP/FSDP.

    from lmlab.train import TrainConfig, Trainer, run_training
    run_training("configs/tiny-llama-world.yaml", ["optim.lr=1e-3"], resume=False)
"""

from lmlab.train.config import DataSection, DistributedSection, ModelSection, OptimSection, RunSection, TrainConfig
from lmlab.train.loop import Trainer
from lmlab.train.objective_registry import (available_objectives, build_objective, get_objective,
                                             register_objective)
from lmlab.train.optim import cosine_lr, make_schedule, wsd_lr
from lmlab.train.run import build_data, build_model, run_training

__all__ = [
    "DataSection", "DistributedSection", "ModelSection", "OptimSection", "RunSection", "TrainConfig", "Trainer",
    "available_objectives", "build_data", "build_objective", "build_model", "cosine_lr", "get_objective", "make_schedule",
    "register_objective", "run_training", "wsd_lr",
]
