"""VAS value models on disk: one safetensors file (the value estimator's weights) whose header metadata holds a
JSON description; never a pickle.

Why a format of its own: a value estimator is fit on *one* base model's samples (Han et al. 2024: V estimates
the return of continuing with the frozen base policy), so it is only meaningful next to that base. The header
names

- ``hook``: where the value head reads the estimator's trunk (``ln_final``: its final-norm hidden state),
- ``width``: that hidden state's size (the head's input width, = the trunk's d_model),
- ``base_fingerprint``: :func:`lmlab.steer.model_fingerprint` of the base the samples came from, and its
  ``vocab_size`` (the estimator scores the base's candidate token ids, so they must share one tokenizer),
- ``trunk_config``: the estimator's own architecture (it may be much smaller than the base),
- ``vas``: the decoding hyper-parameters it was built for (beta, top_k; trl's ``VASLogitsProcessor``
  defaults 1 and 10), and ``meta``: provenance (reward, prompts, fit report).

:func:`load_vas` refuses a file made for another base, a damaged header or a head whose width does not match
its trunk, each with one line naming the file and the field.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmlab.control.vas import VAS, ValueModel
from lmlab.errors import LmlabError

FORMAT = "lmlab.vas_value_model/1"
HOOK = "ln_final"


def _fingerprint(model) -> str:
    from lmlab.steer.vector import model_fingerprint  # lazy: control does not import steer at module load

    return model_fingerprint(model)


def save_value_model(path: str | os.PathLike, value_model: ValueModel, base, *, beta: float = 1.0, top_k: int = 10,
                     meta: dict | None = None) -> Path:
    """Write ``value_model`` (fit on ``base``'s samples) to one safetensors file, atomically (temp + rename)."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = value_model.trunk.config
    header = {"format": FORMAT, "hook": HOOK, "width": int(value_model.head.in_features),
              "base_fingerprint": _fingerprint(base), "vocab_size": int(base.config.vocab_size),
              "trunk_config": cfg.to_dict(), "vas": {"beta": float(beta), "top_k": int(top_k)}, "meta": meta or {}}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        # save_model (not save_file): a trunk with tied embeddings shares one tensor between two names
        save_model(value_model.float().cpu(), tmp, metadata={"lmlab": json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a value-model file (checked for its format and required fields)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("lmlab", "null"))
    except FileNotFoundError:
        raise LmlabError(f"{path}: no such VAS value-model file") from None
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is one line
        raise LmlabError(f"{path}: not a safetensors VAS value-model file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise LmlabError(f"{path}: not an lmlab VAS value model (expected metadata format {FORMAT!r}; "
                         "build one with `lmlab steer MODEL --method vas ...`)")
    for key in ("hook", "width", "base_fingerprint", "vocab_size", "trunk_config", "vas"):
        if key not in header:
            raise LmlabError(f"{path}: metadata lacks {key!r}")
    if header["hook"] != HOOK:
        raise LmlabError(f"{path}: hook {header['hook']!r} is not one this version reads (expected {HOOK!r})")
    return header


def _trunk_config(path: Path, d: dict[str, Any]):
    from lmlab.core.config import ModelConfig

    d = dict(d)
    d["rope_scaling_params"] = tuple((k, tuple(v) if isinstance(v, list) else v)
                                     for k, v in d.get("rope_scaling_params") or ())
    for key in ("sliding_window_layers", "eos_token_id"):
        if isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    try:
        return ModelConfig(**d)
    except TypeError as e:
        raise LmlabError(f"{path}: trunk_config is not a model config ({e})") from None


def load_value_model(path: str | os.PathLike, base=None) -> tuple[ValueModel, dict]:
    """The value estimator in ``path`` and its header; with ``base``, check the file was made for it."""
    from safetensors.torch import load_model

    from lmlab.core.model import Transformer

    path = Path(path)
    header = read_header(path)
    cfg = _trunk_config(path, header["trunk_config"])
    if int(header["width"]) != cfg.d_model:
        raise LmlabError(f"{path}: value head width {header['width']} does not match its trunk's d_model "
                         f"{cfg.d_model}")
    if int(header["vocab_size"]) != cfg.vocab_size:
        raise LmlabError(f"{path}: vocab_size {header['vocab_size']} differs from its trunk's {cfg.vocab_size}")
    if base is not None:
        check_base(path, header, base)
    vm = ValueModel(Transformer(cfg))
    try:
        load_model(vm, str(path), strict=True)
    except Exception as e:  # noqa: BLE001 - missing/mis-shaped tensors: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmlabError(f"{path}: weights do not match trunk_config ({first})") from None
    return vm.eval(), header


def check_base(path, header: dict, base) -> None:
    if int(header["vocab_size"]) != base.config.vocab_size:
        raise LmlabError(f"{path}: value model for a vocabulary of {header['vocab_size']}, the base model has "
                         f"{base.config.vocab_size} (it must share the base model's tokenizer)")
    fp = _fingerprint(base)
    if header["base_fingerprint"] != fp:
        raise LmlabError(f"{path}: value model fit on base fingerprint {header['base_fingerprint']}, this model is "
                         f"{fp} (a value estimator only guides the base whose samples it was fit on)")


def load_vas(path: str | os.PathLike, base, beta: float | None = None, top_k: int | None = None) -> VAS:
    """A :class:`VAS` processor for ``base`` from a value-model file; ``beta``/``top_k`` default to the file's."""
    vm, header = load_value_model(path, base)
    vas = header["vas"]
    return VAS(vm, beta=float(vas.get("beta", 1.0)) if beta is None else beta,
               top_k=int(vas.get("top_k", 10)) if top_k is None else top_k, base=base)

