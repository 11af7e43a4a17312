"""The server's configuration file (YAML or JSON, read with ``lmlab.config_io``): limits and the per-request
methods it loads at start-up.

    model_name: world            # the id /v1/models lists (default: the checkpoint directory's name)
    max_batch_size: 16           # rows decoded together
    max_queue: 64                # requests waiting for a row; beyond this the server answers 429
    max_tokens_limit: 256        # the largest max_tokens a request may ask for
    context_length: null         # prompt + max_tokens per request (default: the model's max_seq_len)
    adapters:                    # LoRA adapters (peft or lmlab format, lmlab.peft.load_adapter)
      formal: runs/formal-lora
    steering:                    # steering vectors: a safetensors tensor added at a hook point
      happy: {path: vectors.safetensors, tensor: happy, hook: blocks.2.resid_post, coeff: 4.0}

Paths are relative to the configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmlab.config_io import load_config
from lmlab.errors import LmlabError


@dataclass
class SteerSpec:
    """One steering vector: ``tensor`` (a key of the safetensors file at ``path``; empty = its only tensor)
    is multiplied by the request's coefficient (default ``coeff``) and added at hook point ``hook``."""

    path: str = ""
    hook: str = ""
    tensor: str = ""
    coeff: float = 1.0


@dataclass
class ServeConfig:
    model_name: str = ""
    max_batch_size: int = 16
    max_queue: int = 64
    max_tokens_limit: int = 256
    context_length: int | None = None
    max_n: int = 8  # the largest `n` (samples per prompt) a request may ask for
    prefill_chunk_size: int | None = None
    adapters: dict[str, str] = field(default_factory=dict)
    steering: dict[str, SteerSpec] = field(default_factory=dict)

    def validate(self, where: str = "serve config") -> None:
        for name in ("max_batch_size", "max_queue", "max_tokens_limit", "max_n"):
            if getattr(self, name) < 1:
                raise LmlabError(f"{where}: '{name}' must be >= 1, got {getattr(self, name)}")
        if self.context_length is not None and self.context_length < 2:
            raise LmlabError(f"{where}: 'context_length' must be >= 2, got {self.context_length}")
        for name, spec in self.steering.items():
            if not spec.path or not spec.hook:
                raise LmlabError(f"{where}: steering '{name}' needs 'path' and 'hook'")
        clash = set(self.adapters) & set(self.steering)
        if clash:
            raise LmlabError(f"{where}: {sorted(clash)} named both as an adapter and as a steering vector")


def load_serve_config(path: str | Path | None, overrides=()) -> ServeConfig:
    """The config at ``path`` (None = defaults), with relative method paths resolved against its folder."""
    cfg = load_config(ServeConfig, path, overrides)
    where = str(path) if path is not None else "serve config"
    cfg.validate(where)
    if path is not None:
        base = Path(path).resolve().parent
        cfg.adapters = {k: str(base / v) for k, v in cfg.adapters.items()}
        for spec in cfg.steering.values():
            spec.path = str(base / spec.path)
    return cfg
