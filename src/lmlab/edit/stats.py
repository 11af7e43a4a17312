"""Second-moment statistics of MLP keys, ``C = E[k k^T]`` at ``blocks.{l}.mlp.post``, as a cached artefact.

Why: ROME, MEMIT and AlphaEdit weigh an update by how keys are distributed over ordinary text (ROME's ``C``,
MEMIT's ``lambda C``, AlphaEdit's null-space projector of ``K0 K0^T``). The papers estimate it from 100,000
Wikipedia samples; here it comes from a local corpus (the world's text, or any list of texts / text file), so
nothing is downloaded. It is expensive on a large model and constant across edits, so it is stored as an
artefact (``safetensors`` + JSON, never a pickle) keyed by model fingerprint, layer, corpus hash and count.

The fingerprint covers the config and every parameter except the MLP down projections -- the weights editing
changes -- so an edited model keeps its base model's statistics (the reference code also reuses them across
sequential edits), while any other model gets a different key; loading an artefact made for another model is
an error naming both fingerprints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lmlab.errors import LmlabError

FORMAT = "lmlab.edit.second_moment"
EDITED_SUFFIX = ".mlp.down_proj.weight"


def default_stats_dir() -> Path:
    """``$LMLAB_CACHE_DIR/edit-stats`` or ``~/.cache/lmlab/edit-stats``."""
    root = os.environ.get("LMLAB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lmlab")
    return Path(root) / "edit-stats"


def model_fingerprint(model: nn.Module) -> str:
    """Hash of the config and all parameters but the down projections (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    cfg = model.config
    cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    h.update(json.dumps(cfg_dict, sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        if name.endswith(EDITED_SUFFIX) or ".adapters." in name:
            continue
        h.update(name.encode())
        t = p.detach().contiguous().reshape(-1).cpu()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def corpus_hash(texts: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()


def read_corpus(corpus) -> list[str]:
    """A list of texts, or a text file (one document per blank-line-separated paragraph)."""
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise LmlabError(f"corpus: cannot read {path} ({e})") from None
        docs = [d.strip() for d in text.split("\n\n") if d.strip()]
    else:
        docs = [d for d in corpus] if corpus is not None else []
        if not all(isinstance(d, str) for d in docs):
            raise LmlabError("corpus: expected a list of str or a path to a text file")
    if not docs:
        raise LmlabError("corpus: editing needs a non-empty corpus for its key statistics (corpus=texts or a file)")
    return docs


@torch.no_grad()
def compute_second_moments(model: nn.Module, tokenizer, layers: Sequence[int], texts: Sequence[str],
                           n_samples: int, batch_size: int = 16) -> tuple[dict[int, torch.Tensor], int]:
    """``{layer: E[k k^T] [d_mlp, d_mlp] fp64}`` over the first ``n_samples`` key positions of ``texts`` (each
    text starts after the tokenizer's BOS, as training documents do), and the number of keys used."""
    max_len = model.config.max_seq_len
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    names = [f"blocks.{layer}.mlp.post" for layer in layers]
    d = model.config.d_mlp
    sums = {layer: torch.zeros(d, d, dtype=torch.float64) for layer in layers}
    count = 0
    for start in range(0, len(texts), batch_size):
        rows = [(bos + tokenizer.encode(t))[:max_len] for t in texts[start:start + batch_size]]
        T = max(map(len, rows))
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=model.device)
        valid = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.bool)  # [B, T]
        _, acts = model.run_with_cache(ids, names=names, stop_at_layer=max(layers) + 1)
        take = min(int(valid.sum()), n_samples - count)
        for layer, name in zip(layers, names):
            keys = acts[name][valid.to(acts[name].device)][:take].double().cpu()  # [N, d_mlp]
            sums[layer] += keys.T @ keys
        count += take
        if count >= n_samples:
            break
    return {layer: s / count for layer, s in sums.items()}, count


def _artefact_path(stats_dir: Path, fingerprint: str, layer: int, chash: str, n_samples: int) -> Path:
    return stats_dir / f"{fingerprint}" / f"layer{layer}-corpus{chash}-n{n_samples}"


def load_second_moment(path: Path, fingerprint: str, layer: int) -> torch.Tensor:
    """Read one artefact (``.json`` + ``.safetensors``), refusing one made for another model or layer."""
    from safetensors.torch import load_file

    meta_path, tensor_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LmlabError(f"{meta_path}: not a readable statistics record ({e})") from None
    if meta.get("format") != FORMAT:
        raise LmlabError(f"{meta_path}: not an lmlab key-statistics record")
    if meta.get("model_fingerprint") != fingerprint:
        raise LmlabError(f"{meta_path}: statistics were computed for model {meta.get('model_fingerprint')}, "
                         f"not this model ({fingerprint})")
    if meta.get("layer") != layer:
        raise LmlabError(f"{meta_path}: statistics are for layer {meta.get('layer')}, not {layer}")
    try:
        return load_file(str(tensor_path))["mom2"].double()
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the user's to fix, named here
        raise LmlabError(f"{tensor_path}: cannot read the statistics tensor ({e})") from None


def second_moments(model: nn.Module, tokenizer, layers: Sequence[int], corpus, n_samples: int,
                   stats_dir: str | Path | None = None) -> dict[int, torch.Tensor]:
    """``{layer: C}`` from the artefact cache when present, else computed (all missing layers in one pass) and
    stored. ``stats_dir=False`` disables the cache."""
    texts = read_corpus(corpus)
    fp, chash = model_fingerprint(model), corpus_hash(texts)
    out: dict[int, torch.Tensor] = {}
    base = None if stats_dir is False else Path(stats_dir) if stats_dir is not None else default_stats_dir()
    missing = list(layers)
    if base is not None:
        missing = []
        for layer in layers:
            path = _artefact_path(base, fp, layer, chash, n_samples)
            if path.with_suffix(".json").is_file():
                out[layer] = load_second_moment(path, fp, layer)
            else:
                missing.append(layer)
    if missing:
        computed, used = compute_second_moments(model, tokenizer, missing, texts, n_samples)
        out.update(computed)
        if base is not None:
            from lmlab.io.atomic import atomic_save_safetensors, atomic_write_json

            for layer, mom2 in computed.items():
                path = _artefact_path(base, fp, layer, chash, n_samples)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_safetensors(path.with_suffix(".safetensors"), {"mom2": mom2})
                atomic_write_json(path.with_suffix(".json"), {
                    "format": FORMAT, "model_fingerprint": fp, "layer": layer, "hook": f"blocks.{layer}.mlp.post",
                    "corpus_hash": chash, "n_samples_requested": n_samples, "n_keys_used": used})
    return out
