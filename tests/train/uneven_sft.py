"""SFT-style rows with very uneven loss-token counts (3, 58, 3, 58 assistant tokens), shared by the
accumulation test and the 2-process DDP worker (``ddp_uneven_worker.py``)."""

from __future__ import annotations

import torch

VOCAB, BLOCK = 61, 60
ACCUM_ORDER = (3, 3, 58, 58)  # micro-batches of 2 rows: (3, 3) then (58, 58)
DDP_ORDER = (3, 58, 3, 58)  # rank r of 2 takes rows r::2: (3, 3) on rank 0, (58, 58) on rank 1


def uneven_model(seed: int = 0):
    from lmlab.core.config import ModelConfig
    from lmlab.core.model import Transformer

    config = ModelConfig.llama_like(VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return Transformer(config).init_weights(seed=seed).train()


def uneven_rows(order=ACCUM_ORDER, seed: int = 0) -> dict[str, torch.Tensor]:
    """Four rows: ``input_ids`` [4, BLOCK], ``labels`` with only the last n_i targets kept (-100 elsewhere)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(order), BLOCK + 1), generator=gen)
    labels = ids[:, 1:].clone()
    for i, n in enumerate(order):
        labels[i, : BLOCK - n] = -100
    return {"input_ids": ids[:, :-1].contiguous(), "labels": labels}


class UnevenRows:
    """``batches(n)`` walks the fixed global row order; this rank takes rows ``rank::world_size`` of each
    global batch of ``n * world_size`` rows (the PackedBlocks protocol)."""

    def __init__(self, order=ACCUM_ORDER, rank: int = 0, world_size: int = 1) -> None:
        self.rows, self.rank, self.world_size, self.position = uneven_rows(order), rank, world_size, 0

    def batches(self, n: int):
        total = len(self.rows["input_ids"])
        while True:
            idx = [(self.position + self.rank + j * self.world_size) % total for j in range(n)]
            self.position += n * self.world_size
            yield {k: v[idx] for k, v in self.rows.items()}


def config(out_dir, grad_accum: int, steps: int = 1):
    from lmlab.config_io import load_config
    from lmlab.train.config import TrainConfig

    # eps 1e-4: Adam's first update is lr * g / (|g| + eps), whose slope in g is lr / eps where |g| << eps; at 1e-8
    # fp32 summation-order noise in tiny gradients would dominate a 1e-6 parameter comparison
    return load_config(TrainConfig, None, [
        f"run.out_dir={out_dir}", "run.progress=false", "run.eval_every=0", "run.ckpt_every=0", "run.device=cpu",
        f"run.max_steps={steps}", "run.objective=sft", "data.batch_size=4",
        f"data.block_size={BLOCK}", f"data.grad_accum={grad_accum}", "optim.warmup_steps=0", "optim.lr=1e-2",
        "optim.eps=1e-4", "optim.grad_clip=0", "optim.schedule=constant"])
