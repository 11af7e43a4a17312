"""Adapters on disk: LoRA in peft's format (both directions), other adapters in lmlab's own format.

peft format (what ``PeftModel.save_pretrained`` writes and ``PeftModel.from_pretrained`` reads):
``adapter_config.json`` (``peft_type: LORA``, ``task_type: CAUSAL_LM``, ``r``, ``lora_alpha``,
``target_modules`` as HF module names, ``use_rslora``, ``fan_in_fan_out``, ``rank_pattern`` /
``alpha_pattern`` for modules whose rank or alpha differ) and ``adapter_model.safetensors`` with keys
``base_model.model.<HF module path>.lora_A.weight`` [r, in] and ``...lora_B.weight`` [out, r].

lmlab module names map to HF module paths through the family key maps (``lmlab.io.keymaps``). Fused HF
projections are mapped exactly:

- export: LoRAs on lmlab's separate q/k/v (GPT-2 ``c_attn``, NeoX ``query_key_value``) become one LoRA of
  rank ``r_q + r_k + r_v`` on the fused module: ``A`` stacks the three A's, ``B`` is block-diagonal in the
  fused output layout (NeoX's per-head interleaving included), zero for a part without LoRA. The fused
  delta ``B @ A`` is then exactly the three deltas in the fused layout.
- import: a LoRA on a fused module becomes one LoRA per part with the same ``A`` and that part's rows of ``B``.

GPT-2's Conv1D layers store weights as [in, out]; peft's LoRA factors are still [r, in] / [out, r] and
only its merge transposes, so exporting just sets ``fan_in_fan_out: true``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lmlab.errors import LmlabError
from lmlab.peft.inject import (
    active_adapter, adapted_modules, adapter_configs, adapter_dtype, adapter_state_dict, add_adapter, attach,
    check_new_name, mark_trainable, require_adapter, set_adapter,
)
from lmlab.peft.lora import LoraAdapter, LoraConfig

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")

# peft LoraConfig fields lmlab cannot reproduce, with why; a saved value other than "off" is refused.
UNSUPPORTED = {
    "use_dora": "DoRA adds a magnitude vector",
    "modules_to_save": "it stores fully trained copies of base modules",
    "lora_bias": "it trains a bias in lora_B",
    "trainable_token_indices": "it trains embedding rows",
    "layer_replication": "it duplicates layers",
    "target_parameters": "it adapts raw parameters, not modules",
    "alora_invocation_tokens": "activated LoRA changes the forward",
    "arrow_config": "Arrow routing changes the forward",
    "use_bdlora": "block-diagonal LoRA changes the forward",
    "velora_config": "VeLoRA changes the forward",
    "monteclora_config": "MonteCLoRA changes the forward",
    "kasa_config": "KaSA changes the forward",
    "use_qalora": "QA-LoRA pools inputs",
    "megatron_config": "Megatron-parallel layers",
}
# init_lora_weights values that rewrite the base weights, so the adapter only fits a modified base.
BASE_CHANGING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga", "mica")


# ------------------------------------------------------------------------------ HF <-> lmlab module map

@dataclass
class _HFModule:
    hf: str  # HF module path, e.g. model.layers.0.self_attn.q_proj
    ours: list[str]  # lmlab module names, one per part of a fused module
    rows: Any  # transform between the parts' output rows and the fused rows (None when one-to-one)
    conv1d: bool


def _row_transform(transform):
    from lmlab.io.keymaps import SplitNeoXQKV, SplitQKV

    if isinstance(transform, SplitQKV):
        return SplitQKV(conv1d=False)  # lora_B rows are output features: no Conv1D transpose
    if isinstance(transform, SplitNeoXQKV):
        return transform
    raise LmlabError(f"no LoRA mapping for fused HF tensors split by {type(transform).__name__}")


def hf_modules(c) -> list[_HFModule]:
    """Every linear-weight HF module of this config with the lmlab module(s) it holds."""
    from lmlab.io.keymaps import TIED_HEAD_KEYS, SplitQKV, Transpose, key_map

    out: list[_HFModule] = []
    for hf_key, rule, i in key_map(c).hf_keys(c):
        ours = [o.format(i=i) if i is not None else o for o in rule.ours]
        if not hf_key.endswith(".weight") or not all(o.endswith(".weight") for o in ours):
            continue
        conv1d = isinstance(rule.transform, Transpose) or (isinstance(rule.transform, SplitQKV)
                                                           and rule.transform.conv1d)
        rows = _row_transform(rule.transform) if len(ours) > 1 else None
        out.append(_HFModule(hf_key[: -len(".weight")], [o[: -len(".weight")] for o in ours], rows, conv1d))
    if not any(m.ours == ["lm_head"] for m in out):  # tied heads have no rule of their own
        out.append(_HFModule(TIED_HEAD_KEYS[c.model_type][: -len(".weight")], ["lm_head"], None, False))
    return out


# --------------------------------------------------------------------------------------------- export

def _export_entries(model: nn.Module, name: str, use_rslora: bool):
    """[(hf module, A, B, r, alpha, conv1d)] for adapter ``name``, fused parts combined exactly."""
    c = model.config
    loras = {mod: slot[name] for mod, _, slot in adapted_modules(model, name)}
    entries = []
    used = set()
    for m in hf_modules(c):
        parts = [loras.get(o) for o in m.ours]
        if not any(p is not None for p in parts):
            continue
        used.update(o for o, p in zip(m.ours, parts) if p is not None)
        if m.rows is None:
            a = parts[0]
            A, B, r, s = a.lora_A.weight, a.lora_B.weight, a.r, a.scaling
        elif all(p is not None for p in parts) and len({(p.r, p.scaling) for p in parts}) == 1 and all(
                torch.equal(p.lora_A.weight, parts[0].lora_A.weight) for p in parts):
            # one fused LoRA split at import (shared A): export it back at its own rank
            a = parts[0]
            A, r, s = a.lora_A.weight, a.r, a.scaling
            B = m.rows.to_hf([p.lora_B.weight for p in parts], c)
        else:
            present = [p for p in parts if p is not None]
            s = present[0].scaling
            r = sum(p.r for p in present)
            A = torch.cat([p.lora_A.weight for p in present], dim=0)  # [R, in]
            blocks, col = [], 0
            for o, p in zip(m.ours, parts):
                out_features = model.get_submodule(o).out_features
                blk = A.new_zeros(out_features, r)
                if p is not None:
                    blk[:, col: col + p.r] = p.lora_B.weight * (p.scaling / s)
                    col += p.r
                blocks.append(blk)
            B = m.rows.to_hf(blocks, c)  # [out_fused, R]
        alpha = s * (r ** 0.5 if use_rslora else r)
        if abs(round(alpha) - alpha) < 1e-9 * max(1.0, abs(alpha)):
            alpha = int(round(alpha))
        entries.append((m.hf, A, B, r, alpha, m.conv1d))
    missing = sorted(set(loras) - used)
    if missing:
        raise LmlabError(f"adapter {name!r}: modules {missing} have no HF counterpart in a {c.model_type} checkpoint")
    return entries


def _target_modules(c, exported: list[str]) -> list[str]:
    """Short suffix names when they select exactly the exported modules (as peft writes them), else full paths."""
    every = [m.hf for m in hf_modules(c)]
    suffixes = {h.rsplit(".", 1)[-1] for h in exported}
    overmatch = {h for h in every if h.rsplit(".", 1)[-1] in suffixes} - set(exported)
    return sorted(suffixes) if not overmatch else sorted(exported)


def peft_adapter_config(model: nn.Module, name: str | None = None, base_model_name_or_path: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json contents, tensors) of LoRA adapter ``name`` in peft's format."""
    name = name or active_adapter(model)
    if name is None:
        raise LmlabError("save_adapter: no adapter is active and no name was given")
    require_adapter(model, name)
    loras = [slot[name] for _, _, slot in adapted_modules(model, name)]
    if not all(isinstance(a, LoraAdapter) for a in loras):
        raise LmlabError(f"adapter {name!r} is not a LoRA: peft has no format for it")
    use_rslora = all(a.use_rslora for a in loras)
    entries = _export_entries(model, name, use_rslora)
    r, alpha = Counter((e[3], e[4]) for e in entries).most_common(1)[0][0]
    cfg = adapter_configs(model)[name]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": float(getattr(cfg, "dropout", 0.0)),
        "target_modules": _target_modules(model.config, [e[0] for e in entries]),
        "rank_pattern": {re.escape(e[0]): e[3] for e in entries if e[3] != r},
        "alpha_pattern": {re.escape(e[0]): e[4] for e in entries if e[4] != alpha},
        "use_rslora": use_rslora,
        "fan_in_fan_out": any(e[5] for e in entries),
        "bias": "none",
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tensors = {}
    for hf, A, B, *_ in entries:
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = A.detach().contiguous().clone()
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = B.detach().contiguous().clone()
    return config, tensors


def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write adapter ``name`` (default: active) to ``directory``: LoRA in peft's format, others in lmlab's."""
    name = name or active_adapter(model)
    if name is None:
        raise LmlabError("save_adapter: no adapter is active and no name was given")
    require_adapter(model, name)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if all(isinstance(slot[name], LoraAdapter) for _, _, slot in adapted_modules(model, name)):
        config, tensors = peft_adapter_config(model, name, base_model_name_or_path)
    else:
        cfg = adapter_configs(model)[name].to_dict()
        config = {"lmlab_method": cfg.pop("method"), "lmlab_config": cfg}
        tensors = {k: v.detach().contiguous().clone() for k, v in adapter_state_dict(model, name).items()}
    save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": "pt"})
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return d


# --------------------------------------------------------------------------------------------- import

def _read_tensors(d: Path) -> dict[str, torch.Tensor]:
    st, binf = d / WEIGHTS_FILE, d / "adapter_model.bin"
    if st.exists():
        try:
            with safe_open(str(st), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as err:
            raise LmlabError(f"{st}: truncated or corrupt safetensors file ({err})") from None
    if binf.exists():
        try:
            return torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is the user's file
            raise LmlabError(f"{binf}: cannot be read with weights_only=True ({err})") from None
    raise LmlabError(f"{d}: no {WEIGHTS_FILE} (or adapter_model.bin)")


def _read_config(d: Path) -> dict[str, Any]:
    if not d.is_dir():
        raise LmlabError(f"{d}: no such adapter directory")
    f = d / CONFIG_FILE
    if not f.exists():
        found = ", ".join(sorted(p.name for p in d.iterdir())[:8]) or "nothing"
        raise LmlabError(f"{d}: not an adapter directory, missing {CONFIG_FILE} (found: {found})")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LmlabError(f"{f}: not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise LmlabError(f"{f}: expected a JSON object")
    return cfg


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank_pattern / alpha_pattern lookup: first key k with re.match(rf"(.*\\.)?({k})$", module)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _is_unchanged_base_copy(model: nn.Module, key: str, t: torch.Tensor) -> bool:
    """Whether ``key`` is a stored copy of a base weight (``<module>[.base_layer].weight``) equal to ours;
    a copy that differs is an error (lmlab adapters never change base weights)."""
    from lmlab.io.keymaps import TIED_HEAD_KEYS, key_map

    if not key.startswith(PREFIX) or not key.endswith(".weight"):
        return False
    c = model.config
    hf_key = key[len(PREFIX):].replace(".base_layer.weight", ".weight")
    ours = None
    for k, rule, i in key_map(c).hf_keys(c):
        if k == hf_key and len(rule.ours) == 1:
            ours = (rule.ours[0].format(i=i) if i is not None else rule.ours[0], rule.transform)
    if ours is None and hf_key == TIED_HEAD_KEYS[c.model_type]:
        ours = ("lm_head.weight", None)
    if ours is None:
        return False
    mine = model.get_parameter(ours[0]).detach()
    theirs = ours[1].to_ours(t, c)[0] if ours[1] is not None else t
    if theirs.shape != mine.shape or not torch.equal(theirs.to(mine.dtype), mine):
        raise LmlabError(f"adapter tensor {key!r} is a modified copy of the base weight {ours[0]!r} "
                         "(peft modules_to_save / save_embedding_layers); lmlab adapters cannot change base weights")
    return True


def _check_peft_config(cfg: dict[str, Any], where: str) -> None:
    if cfg.get("peft_type") != "LORA":
        raise LmlabError(f"{where}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        raise LmlabError(f"{where}: task_type {cfg.get('task_type')!r} is not supported (only CAUSAL_LM)")
    for field_name, why in UNSUPPORTED.items():
        if cfg.get(field_name):
            raise LmlabError(f"{where}: {field_name}={cfg[field_name]!r} is not supported ({why})")
    if cfg.get("bias", "none") != "none":
        raise LmlabError(f"{where}: bias={cfg['bias']!r} is not supported (the adapter trained base biases)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
        raise LmlabError(f"{where}: init_lora_weights={init!r} is not supported (it rewrites the base weights; "
                         "convert the adapter to plain LoRA with peft first)")


def _load_peft(model: nn.Module, d: Path, cfg: dict[str, Any], name: str, dtype) -> list[str]:
    where = str(d / CONFIG_FILE)
    _check_peft_config(cfg, where)
    c = model.config
    tensors = _read_tensors(d)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None and _is_unchanged_base_copy(model, key, t):
            continue  # peft's save_embedding_layers stores base head/embedding weights beside the LoRA
        if m is None:
            raise LmlabError(f"{d / WEIGHTS_FILE}: tensor {key!r} is not a LoRA A/B factor of a linear layer "
                             "(embedding LoRA, DoRA magnitudes and saved modules are not supported)")
        factors.setdefault(m.group(1), {})[m.group(2)] = t
    by_hf = {m.hf: m for m in hf_modules(c)}
    use_rslora = bool(cfg.get("use_rslora", False))
    dropout = float(cfg.get("lora_dropout", 0.0) or 0.0)
    built: list[tuple[str, LoraAdapter]] = []
    for hf, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"}:
            raise LmlabError(f"{d / WEIGHTS_FILE}: {hf} has lora_{''.join(ab)} but not both lora_A and lora_B")
        if hf not in by_hf:
            raise LmlabError(f"{d / WEIGHTS_FILE}: adapter targets {hf!r}, which is not a linear layer of a "
                             f"{c.model_type} model as lmlab maps it")
        target = by_hf[hf]
        A, B = ab["A"], ab["B"]
        mods = [model.get_submodule(o) for o in target.ours]
        if not all(isinstance(x, nn.Linear) for x in mods):
            raise LmlabError(f"{hf}: lmlab module {target.ours} is not a linear layer")
        r = _pattern_value(cfg.get("rank_pattern"), hf, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), hf, cfg.get("lora_alpha", 8))
        in_f, out_f = mods[0].in_features, sum(x.out_features for x in mods)
        for which, t, want in (("lora_A", A, (r, in_f)), ("lora_B", B, (out_f, r))):
            if tuple(t.shape) != want:
                raise LmlabError(f"{d / WEIGHTS_FILE}: {PREFIX}{hf}.{which}.weight has shape {tuple(t.shape)}, "
                                 f"but {hf} (lmlab {', '.join(target.ours)}) with r={r} needs {want}")
        Bs = [B] if target.rows is None else target.rows.to_ours(B, c)
        for our, mod, Bj in zip(target.ours, mods, Bs):
            adapter = LoraAdapter(mod.in_features, mod.out_features, r, float(alpha), dropout, use_rslora)
            adapter.to(device=mod.weight.device, dtype=adapter_dtype(mod, dtype))
            adapter.set_factors(A, Bj)
            built.append((our, adapter))
    if not built:
        raise LmlabError(f"{d / WEIGHTS_FILE}: holds no LoRA tensors")
    for our, adapter in built:
        attach(model, our, name, adapter)
    targets = sorted({o for o, _ in built})
    adapter_configs(model)[name] = LoraConfig(r=int(cfg.get("r", 8)), alpha=float(cfg.get("lora_alpha", 8)),
                                              dropout=dropout, target_modules=targets, use_rslora=use_rslora)
    return targets


def _load_native(model: nn.Module, d: Path, cfg: dict[str, Any], name: str, dtype) -> list[str]:
    from lmlab.peft.registry import config_from_dict

    method_cfg = config_from_dict({"method": cfg["lmlab_method"], **(cfg.get("lmlab_config") or {})},
                                  where=str(d / CONFIG_FILE))
    tensors = _read_tensors(d)
    targets = add_adapter(model, method_cfg, name, freeze_base=False, dtype=dtype, activate=False)
    try:
        expected = adapter_state_dict(model, name)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise LmlabError(f"{d / WEIGHTS_FILE}: does not fit this model: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
        for key, t in tensors.items():
            if tuple(t.shape) != tuple(expected[key].shape):
                raise LmlabError(f"{d / WEIGHTS_FILE}: tensor {key!r} has shape {tuple(t.shape)}, the model's "
                                 f"adapter needs {tuple(expected[key].shape)}")
        for mod_name, _, slot in adapted_modules(model, name):
            own = slot[name].state_dict()
            slot[name].load_state_dict({k: tensors[f"{mod_name}.{k}"] for k in own}, strict=True)
    except Exception:
        from lmlab.peft.inject import delete_adapter

        delete_adapter(model, name)
        raise
    return targets


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default", *, activate: bool = True,
                 trainable: bool = False, dtype: torch.dtype | None = None) -> list[str]:
    """Attach the adapter saved in ``directory`` (peft LoRA or lmlab format) as ``name``; returns the lmlab
    module names it adapts. ``trainable=True`` freezes the base and makes this adapter trainable."""
    d = Path(directory)
    check_new_name(model, name)
    cfg = _read_config(d)
    if "lmlab_method" in cfg:
        targets = _load_native(model, d, cfg, name, dtype)
    else:
        targets = _load_peft(model, d, cfg, name, dtype)
    if activate or active_adapter(model) is None:
        set_adapter(model, name)
    if trainable:
        mark_trainable(model, name)
    else:
        for _, _, slot in adapted_modules(model, name):
            slot[name].requires_grad_(False)
    return targets
