"""The world-model recipe: the synthetic world, a BPE tokenizer and a small Llama-style model trained on it.

``lmlab quickstart`` runs it and prints the report; ``lmlab.reference`` ships its output as the reference
checkpoint. Everything lands in ``out``: ``world/``, ``shards/``, ``train/`` (metrics, loss curve, resolved
config) and ``model/`` (HF checkpoint + tokenizer), plus ``report.json``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

# The recipe: sizes chosen so that training memorises the quickstart world's 326 facts (98.8% recall) in
# 136 s on one thread (measured in docs/claims.md); everything else is the TrainConfig default.
RECIPE = [
    "model.d_model=128", "model.n_layers=4", "model.n_heads=4", "model.max_seq_len=128",
    "data.kind=shards", "data.block_size=128", "data.batch_size=16",
    "optim.lr=3e-3", "optim.schedule=cosine", "optim.warmup_steps=30", "optim.weight_decay=0.0",
    "optim.min_lr_ratio=0.1", "run.eval_every=0", "run.ckpt_every=0", "run.keep_last=1", "run.log_every=50",
    "run.seed=0", "run.device=cpu",
]
BATCH_TOKENS = 16 * 128  # data.batch_size * data.block_size above


def shuffled_epochs(docs: list[str], tokens_per_epoch: int, steps: int, seed: int) -> list[str]:
    """Enough copies of the corpus for ``steps`` steps, each in its own seeded document order.

    Packed blocks over one fixed order let a small model learn each fact from the sentences that happen to
    precede it; re-shuffling documents every epoch (as a data loader would) leaves the subject as the cue.
    """
    epochs = max(1, -(-steps * BATCH_TOKENS // max(1, tokens_per_epoch)))
    out: list[str] = []
    for epoch in range(epochs):
        order = list(docs)
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out += order
    return out


def train_world_model(out: Path, steps: int = 500, seed: int = 0, vocab_size: int = 1024,
                      overrides: list[str] | None = None, progress: bool = True, say=print,
                      force: bool = False) -> tuple:
    """The recipe end to end into ``out``: world, tokenizer, shards, training, HF checkpoint in ``out/model``.

    Returns ``(model, tokenizer, world, report)``; ``report`` holds the recall figures against the ground
    truth. ``out`` is replaced only if it is empty or an earlier run wrote it (its marker file), or with
    ``force`` (``lmlab.io.output_paths.replace_output_dir``). The shipped reference checkpoint (``lmlab.reference``) is this
    function's output at the defaults.
    """
    import torch

    import lmlab
    from lmlab.config_io import load_config
    from lmlab.core.tokenizer import train_bpe
    from lmlab.data.recall import recall
    from lmlab.data.shards import PackedBlocks, TokenShards, build_shards
    from lmlab.data.world import WorldConfig, build_world
    from lmlab.errors import LmlabError
    from lmlab.io.output_paths import replace_output_dir
    from lmlab.train.config import TrainConfig
    from lmlab.train.loop import Trainer
    from lmlab.train.run import build_model

    if steps < 1:
        raise LmlabError(f"--steps must be positive, got {steps}")
    out = replace_output_dir(out, "quickstart", force=force)
    started = time.time()

    world = build_world(WorldConfig.quickstart(seed=seed))
    world.write(out / "world")
    # Biographies alone let a small model memorise sentence order instead of facts (56% recall at loss
    # 0.01 in our runs); adding each fact as its own sentence under each training template fixes that.
    # Held-out templates and two-hop phrasings stay out of the training text.
    sentences = [probe.prompt + probe.answer + "." for probe in world.probes("train")]
    docs = world.training_documents() + sentences
    say(f"world: {len(world.facts)} facts, {len(docs)} training documents -> {out / 'world'}")

    tokenizer = train_bpe(docs, vocab_size=vocab_size)
    tokens_per_epoch = sum(len(ids) + 1 for ids in tokenizer.encode_batch(docs))
    index = build_shards(shuffled_epochs(docs, tokens_per_epoch, steps, seed=seed), tokenizer, out / "shards")
    say(f"tokenizer: {len(tokenizer)} tokens; corpus: {tokens_per_epoch} tokens per epoch, "
        f"{index.splits['train'].tokens} in shuffled epochs")

    cfg = load_config(TrainConfig, None, RECIPE + [f"data.path={out / 'shards'}", f"run.out_dir={out / 'train'}",
                                                   f"run.max_steps={steps}", f"run.progress={progress}"]
                      + list(overrides or []))
    torch.manual_seed(cfg.run.seed)
    shards = TokenShards(out / "shards", "train")
    model = build_model(cfg, shards.vocab_size)
    say(f"model: Llama-style, {model.num_parameters() / 1e6:.2f}M parameters; training {steps} steps")
    data = PackedBlocks(shards, cfg.data.block_size, seed=cfg.data.seed)
    summary = Trainer(model, cfg, data).fit()
    say(f"trained: final loss {summary['final_loss']:.3f}, {summary['tokens_per_s']:.0f} tokens/s")

    model.eval()
    lmlab.save(model, out / "model", tokenizer=tokenizer)
    report = {
        "train_fact_recall": recall(model, tokenizer, world.probes("train")),
        "heldout_paraphrase_recall": recall(model, tokenizer, world.probes("heldout")),
        "two_hop_accuracy": recall(model, tokenizer, world.two_hop_probes()),
        "n_facts": len(world.facts), "parameters": model.num_parameters(), "steps": steps, "seed": seed,
        "vocab_size": vocab_size, "overrides": list(overrides or []),
        "final_loss": summary["final_loss"], "seconds": round(time.time() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return model, tokenizer, world, report
