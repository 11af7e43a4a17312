"""lmlab: language-model methods over one compact, Hugging Face-compatible transformer.

The public entry points are re-exported here: ``load``, ``save``, ``generate``, ``load_tokenizer``,
``sequence_logprobs``, ``ModelConfig``, ``Transformer``, ``KVCache``, ``WeightDelta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmlab.errors import LmlabError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lmlab.core.model import Transformer


def load(path, dtype=None, device="cpu") -> "Transformer":
    """Load a Hugging Face checkpoint directory (config.json + safetensors), or a model id found in the local
    Hugging Face cache (downloaded when the network allows), as an lmlab Transformer."""
    from lmlab.io.checkpoint import load_model

    return load_model(_local(path), dtype=dtype, device=device)


def _local(path):
    """``path`` as given when it is a GGUF file or a real-model name, else a directory (model ids resolved
    from the local Hugging Face cache)."""
    from lmlab.io.gguf_format import gguf_path_or_none
    from lmlab.io.hub import resolve_model_path

    return path if gguf_path_or_none(path) is not None else resolve_model_path(path)


def save(model, path, tokenizer=None):
    """Write ``model`` (and optionally its tokenizer) as an HF-layout directory that transformers loads."""
    from lmlab.io.checkpoint import save_model

    return save_model(model, path, tokenizer=tokenizer)


def generate(model, input_ids, config=None, **kwargs: Any):
    """Generate tokens; see ``lmlab.core.generate.generate`` for the options.

    A prompt longer than the model's context (``config.max_seq_len``) is refused with an LmlabError: past it,
    learned positions do not exist and rotary ones were never trained (the CLI offers ``--truncate-left``)."""
    from lmlab.core.generate import generate as _generate

    context = getattr(getattr(model, "config", None), "max_seq_len", None)
    if context is not None:
        lengths = [int(input_ids.shape[-1])] if hasattr(input_ids, "shape") else [len(r) for r in input_ids]
        if lengths and max(lengths) > context:
            raise LmlabError(f"generate: a prompt of {max(lengths)} tokens does not fit the model's context of "
                             f"{context} tokens; shorten it (e.g. keep its last {context - 1} tokens)")
    return _generate(model, input_ids, config, **kwargs)


def load_tokenizer(path):
    """Load a ``tokenizer.json`` directory (or a cached Hugging Face model id) as a lmlab ``Tokenizer``."""
    from lmlab.core.tokenizer import load_tokenizer as _load

    return _load(_local(path))


def sequence_logprobs(model, input_ids, **kwargs: Any):
    """Differentiable log p(completion | prompt) per row, [B]; see ``lmlab.core.logprobs.sequence_logprobs``."""
    from lmlab.core.logprobs import sequence_logprobs as _sequence_logprobs

    return _sequence_logprobs(model, input_ids, **kwargs)


def __getattr__(name: str):
    if name == "Transformer":
        from lmlab.core.model import Transformer

        return Transformer
    if name == "ModelConfig":
        from lmlab.core.config import ModelConfig

        return ModelConfig
    if name == "KVCache":
        from lmlab.core.cache import KVCache

        return KVCache
    if name == "WeightDelta":
        from lmlab.core.delta import WeightDelta

        return WeightDelta
    raise AttributeError(name)


__all__ = ["LmlabError", "load", "save", "generate", "load_tokenizer", "sequence_logprobs", "Transformer",
           "ModelConfig", "KVCache", "WeightDelta", "__version__"]
