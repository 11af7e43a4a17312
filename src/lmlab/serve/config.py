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
    guides:                      # decoding-time guides (lmlab.control), the options of `lmlab generate --guide`
      positive: {guide: gedi, guide_model: runs/gedi, desired_code: "positive", anti_code: "negative"}
      expert: {guide: proxy, tuned: runs/small-tuned, untuned: runs/small}
      safe: {guide: genarm, arm: [runs/arm], beta: 1.0, forbid: ["darn"]}
      valued: {guide: vas, guide_model: value.safetensors, guide_scale: 3.0}   # lmlab steer --method vas
      clean: {forbid: ["darn", "heck"]}
    kv_policies:                 # KV-cache eviction (lmlab.efficient.kv_policy): budget in tokens or a fraction
      window64: {policy: window, budget: 64}
      h2o-half: {policy: h2o, budget: 0.5}
    default_kv_policy: null      # the kv_policies entry for requests that name none (null: the full cache)

Paths are relative to the configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class GuideSpec:
    """One named guide: the fields of ``lmlab generate --guide ...`` (``lmlab.control.cli_options``), so a
    guide in the server is built exactly as the CLI builds it. ``guide``: gedi, genarm, vas, proxy, or empty for
    forbidden strings only; paper defaults as there (GeDi omega 30, proxy alpha 1, GenARM beta 1; VAS: the value
    file's beta unless ``guide_scale``)."""

    guide: str = ""
    guide_model: str = ""  # GeDi: class-conditional guide checkpoint; VAS: value-model file
    guide_scale: float | None = None  # VAS: beta (None = the file's)
    desired_code: str = ""
    anti_code: str = ""
    omega: float = 30.0
    tuned: str = ""  # proxy-tuning: small tuned and untuned checkpoints
    untuned: str = ""
    alpha: float = 1.0
    arm: list[str] = field(default_factory=list)  # GenARM: autoregressive reward models
    arm_weight: list[float] = field(default_factory=list)
    beta: float = 1.0
    forbid: list[str] = field(default_factory=list)  # forbidden strings (also across tokens)


@dataclass
class KVPolicySpec:
    """One named KV policy: ``lmlab.efficient.kv_policy(policy, budget=budget, **options)``; an integer
    budget is tokens kept per row, a float in (0, 1] a fraction of the prompt."""

    policy: str = ""
    budget: int | float = 0
    options: dict[str, Any] = field(default_factory=dict)


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
    guides: dict[str, GuideSpec] = field(default_factory=dict)
    kv_policies: dict[str, KVPolicySpec] = field(default_factory=dict)
    default_kv_policy: str | None = None

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
        for name, spec in self.guides.items():
            if spec.guide not in ("", "gedi", "genarm", "vas", "proxy"):
                raise LmlabError(f"{where}: guide '{name}': 'guide' must be gedi, genarm, vas or proxy (or empty for "
                                 f"forbidden strings only), got {spec.guide!r}")
            if not spec.guide and not spec.forbid:
                raise LmlabError(f"{where}: guide '{name}' names no guide and no forbidden strings")
        if "none" in self.kv_policies:
            raise LmlabError(f"{where}: kv_policies may not define 'none' (a request names it for the full cache)")
        for name, spec in self.kv_policies.items():
            if not spec.policy:
                raise LmlabError(f"{where}: kv_policies '{name}' needs 'policy' (window, sinks, h2o, keyformer)")
            build_kv_policy(name, spec)  # an unknown policy, a bad budget or option: refused before the model loads
        if self.default_kv_policy is not None and self.default_kv_policy not in self.kv_policies:
            raise LmlabError(f"{where}: default_kv_policy {self.default_kv_policy!r} is not a kv_policies entry "
                             f"(entries: {', '.join(sorted(self.kv_policies)) or 'none'})")


def build_kv_policy(name: str, spec: KVPolicySpec):
    """The policy of kv_policies entry ``name`` (``lmlab.efficient.kv_policy``), or one line naming the entry."""
    from lmlab.efficient import kv_policy

    try:
        return kv_policy(spec.policy, budget=spec.budget, **spec.options)
    except LmlabError as e:
        raise LmlabError(f"kv policy '{name}': {e}") from None
    except TypeError as e:  # an option the policy does not take
        raise LmlabError(f"kv policy '{name}': bad options {sorted(spec.options)} ({e})") from None


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
        for spec in cfg.guides.values():
            for key in ("guide_model", "tuned", "untuned"):
                if getattr(spec, key):
                    setattr(spec, key, _local_path(base, getattr(spec, key)))
            spec.arm = [_local_path(base, a) for a in spec.arm]
    return cfg


def _local_path(base: Path, value: str) -> str:
    """``value`` relative to the config's folder when it names something there; else as given (a checkpoint
    name such as a Hugging Face id or a shipped reference model, which ``lmlab.load`` resolves)."""
    candidate = base / value
    return str(candidate) if candidate.exists() or Path(value).is_absolute() else value


def set_default_kv_policy(cfg: ServeConfig, name: str | None, budget: str | None) -> None:
    """``lmlab serve --kv-policy NAME [--kv-budget F]``: the default policy of requests that name none.

    Without ``--kv-budget``, NAME is an entry of the config's ``kv_policies``; with it, NAME is a policy
    (``lmlab.efficient.kv_policy``) added as an entry of that name. Checked here, before the model loads."""
    if name is None:
        if budget is not None:
            raise LmlabError("--kv-budget needs --kv-policy")
        return
    if budget is None:
        if name not in cfg.kv_policies:
            raise LmlabError(f"--kv-policy {name!r} is not a kv_policies entry of the config (entries: "
                             f"{', '.join(sorted(cfg.kv_policies)) or 'none'}); to name a policy, give --kv-budget")
    else:
        if name in cfg.kv_policies:
            raise LmlabError(f"--kv-policy {name!r} is already a kv_policies entry of the config; drop --kv-budget "
                             "to use it as the default")
        from lmlab.cli.common import parse_kv_budget
        from lmlab.efficient import kv_policy

        spec = KVPolicySpec(policy=name, budget=parse_kv_budget(budget))
        kv_policy(spec.policy, budget=spec.budget)  # refuses an unknown policy or a bad budget in one line
        cfg.kv_policies[name] = spec
    cfg.default_kv_policy = name
