"""A small multilingual model for the language-similarity and language-neuron experiments.

Why its own module: mPLM-Sim and LANDeRMT both need a model that saw several languages, and the shipped reference
models saw the base language only.  This trains one from scratch on the world's facts written in every language of
``language_family`` (one byte-level BPE for all of them), in a plain AdamW loop, and caches it as an HF checkpoint
so the second experiment reuses the first one's model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lmlab.adapt.language_family import language_documents
from lmlab.core.model import Transformer
from lmlab.core.tokenizer import train_bpe
from lmlab.errors import LmlabError


@dataclasses.dataclass(frozen=True)
class MultilingualRecipe:
    """The pretraining run: ``steps`` AdamW steps of ``batch`` windows of ``length`` tokens, linear warm-up over
    the first 5% then cosine decay to 10% of ``lr``; ``vocab_size``: the shared BPE's size."""

    steps: int = 300
    batch: int = 16
    length: int = 128
    lr: float = 3e-3
    vocab_size: int = 1024
    seed: int = 0


def token_windows(tokenizer, documents: list[str], length: int) -> torch.Tensor:
    """[n, length]: the documents joined by EOS and cut into consecutive windows (the tail is dropped)."""
    eos = tokenizer.eos_id
    ids: list[int] = []
    for d in documents:
        ids += tokenizer.encode(d) + ([eos] if eos is not None else [])
    n = len(ids) // length
    if n == 0:
        raise LmlabError(f"token_windows: {len(ids)} tokens is less than one window of {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


def lm_loss(model, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over ``rows`` [B, T]."""
    logits = model(rows)  # [B, T, vocab]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), rows[:, 1:].flatten())


def cosine_lr(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(t * torch.pi)).item()))


def pretrain(model, data: torch.Tensor, recipe: MultilingualRecipe, log=print) -> list[float]:
    """Train ``model`` in place on random windows of ``data`` [n, T]; returns the loss per step."""
    gen = torch.Generator().manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.95))
    model.train()
    losses = []
    for step in range(recipe.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, recipe.steps, recipe.lr)
        rows = data[torch.randint(len(data), (recipe.batch,), generator=gen)]  # [batch, T]
        loss = lm_loss(model, rows)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, recipe.steps // 10) == 0:
            log(f"  pretrain step {step + 1}/{recipe.steps}: loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses


def multilingual_model(world, languages: dict, base_config, recipe: MultilingualRecipe,
                       cache_dir: str | os.PathLike | None = None, log=print):
    """(model, tokenizer) trained from scratch on ``languages``' documents; loaded from ``cache_dir`` when a run
    with the same recipe, languages and architecture is there, else trained and saved there (atomically)."""
    import lmlab

    key = {"recipe": dataclasses.asdict(recipe), "languages": sorted(languages),
           "d_model": base_config.d_model, "n_layers": base_config.n_layers, "d_mlp": base_config.d_mlp,
           "world_seed": world.config.seed}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None and (cache / "multilingual.json").is_file():
        if json.loads((cache / "multilingual.json").read_text())["key"] == key:
            log(f"multilingual model: loaded from {cache}")
            return lmlab.load(cache), lmlab.load_tokenizer(cache)
    docs = [d for lang in languages.values() for d in language_documents(world, lang)]
    tokenizer = train_bpe(docs, recipe.vocab_size)
    config = dataclasses.replace(base_config, vocab_size=recipe.vocab_size, bos_token_id=tokenizer.bos_id,
                                 eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    torch.manual_seed(recipe.seed)
    model = Transformer(config).init_weights(seed=recipe.seed)
    data = token_windows(tokenizer, docs, recipe.length)
    log(f"multilingual model: {model.num_parameters():,} parameters, {len(languages)} languages, "
        f"{data.numel():,} tokens, {recipe.steps} steps x {recipe.batch} x {recipe.length}")
    t0 = time.time()
    losses = pretrain(model, data, recipe, log)
    log(f"multilingual model: final loss {sum(losses[-20:]) / 20:.3f} ({time.time() - t0:.0f} s)")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".multilingual-", dir=cache.parent))
        lmlab.save(model, staged, tokenizer=tokenizer)
        (staged / "multilingual.json").write_text(json.dumps({"key": key, "final_loss": losses[-1]}, indent=1))
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(staged, cache)
    return model, tokenizer
