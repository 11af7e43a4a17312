"""Run under ``torchrun --nproc_per_node=2``: SFT steps on the uneven rows, rank 0 writes the parameters
and losses to OUT_DIR (used by test_loss_normalisation.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from uneven_sft import DDP_ORDER, UnevenRows, config, uneven_model


def main(out_dir: str, grad_accum: int, steps: int) -> None:
    from lmlab.train.distributed import cleanup_distributed, dist_info_from_env
    from lmlab.train.loop import Trainer

    torch.set_num_threads(1)
    info = dist_info_from_env()
    trainer = Trainer(uneven_model(), config(Path(out_dir) / "run", grad_accum, steps),
                      UnevenRows(DDP_ORDER, info.rank, info.world_size))
    trainer.fit()
    if info.is_main:
        save_file({k: v.detach().clone().contiguous() for k, v in trainer.module.state_dict().items()},
                  str(Path(out_dir) / "params.safetensors"))
        (Path(out_dir) / "losses.json").write_text(json.dumps(trainer.step_losses))
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
