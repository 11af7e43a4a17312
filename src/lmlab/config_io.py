"""YAML recipes and ``--set a.b=c`` overrides -> nested dataclasses, and back.

Dataclasses are the single source of truth: a key that is not a field is an error (naming the dotted key and
the file it came from), and every value is coerced through the field's type annotation. The coercion matters
because PyYAML follows YAML 1.1, where ``5e-1`` (no dot) is a *string*, not a float.

Layers are merged in order ``base`` < YAML file < overrides; each layer is validated on its own so an error
names the layer it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lmlab.errors import LmlabError

_MISSING = dataclasses.MISSING


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce_value(tp: Any, value: Any, key: str, source: str) -> Any:
    """Coerce one (YAML-parsed) value to the annotation ``tp``; raise LmlabError naming key, value and type."""

    def fail(extra: str = "") -> LmlabError:
        return LmlabError(f"{source}: key '{key}' has value {value!r} which is not a valid "
                          f"{_type_name(tp)}{extra}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and type(None) in args:
            return None
        for arg in args:  # a value that already has one of the types keeps it ("q_proj" stays a str)
            if isinstance(arg, type) and arg is not type(None) and type(value) is arg:
                return value
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(arg, value, key, source)
            except LmlabError as err:
                errors.append(err)
        raise fail()
    if origin is Literal:
        for choice in args:
            try:
                if coerce_value(type(choice), value, key, source) == choice:
                    return choice
            except LmlabError:
                pass
        raise LmlabError(f"{source}: key '{key}' has value {value!r}; expected one of {list(args)}")
    if origin in (tuple, list):
        if isinstance(value, str):  # "--set optim.betas=0.9,0.95" or a single item
            value = [yaml.safe_load(v) for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail(f" with {len(args)} items")
            return tuple(coerce_value(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [coerce_value(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        kt, vt = args if args else (Any, Any)
        return {coerce_value(kt, k, key, source): coerce_value(vt, v, f"{key}.{k}", source)
                for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise fail(" (expected a mapping)")
        return _construct(tp, _validate(tp, value, key, source), key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise fail()
    if tp is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value.replace("_", ""))
            except ValueError:
                raise fail() from None
            if as_float.is_integer():
                return int(as_float)
        raise fail()
    if tp is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail()
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail()
    return value


def _validate(cls: type, data: dict, prefix: str, source: str) -> dict:
    """Check keys and coerce the values of one layer; nested dataclass fields stay (validated) dicts."""
    if not isinstance(data, dict):
        raise LmlabError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(fields)
            raise LmlabError(f"{source}: unknown key '{dotted}' (known: {known})")
        tp = hints[name]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            out[name] = _validate(tp, value, dotted, source)
        elif _is_dataclass_type(tp) and value is not None:
            raise LmlabError(f"{source}: key '{dotted}' must be a mapping of {tp.__name__} fields, got {value!r}")
        else:
            out[name] = coerce_value(tp, value, dotted, source)
    return out


def parse_fields(cls: type, data: dict, prefix: str, source: str) -> dict[str, Any]:
    """The keys of ``data`` checked against the fields of dataclass ``cls`` and coerced through their
    annotations (nested dataclasses built): a partial set of keyword arguments for ``cls`` or for a
    function whose parameters ``cls`` describes (objective arguments, method settings)."""
    out = _validate(cls, data, prefix, source)
    hints = _hints(cls)
    for name, value in out.items():
        if _is_dataclass_type(hints[name]) and isinstance(value, dict):
            out[name] = _construct(hints[name], value, f"{prefix}.{name}" if prefix else name)
    return out


def parse_dataclass(cls: type, data: dict, prefix: str, source: str) -> Any:
    """``cls(**data)`` with every key checked and coerced (the one parsing path for nested settings)."""
    return _construct(cls, _validate(cls, data, prefix, source), prefix)


def deep_merge(low: dict, high: dict) -> dict:
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _construct(cls: type, data: dict, prefix: str = "") -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            value = data[f.name]
            if _is_dataclass_type(tp) and isinstance(value, dict):
                value = _construct(tp, value, dotted)
            kwargs[f.name] = value
        elif f.default is _MISSING and f.default_factory is _MISSING:
            if _is_dataclass_type(tp):
                kwargs[f.name] = _construct(tp, {}, dotted)
            else:
                raise LmlabError(f"config: missing required key '{dotted}'")
    try:
        return cls(**kwargs)
    except LmlabError:
        raise
    except (TypeError, ValueError) as err:
        raise LmlabError(f"config: invalid '{prefix or cls.__name__}': {err}") from err


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001 after coercion later); the value is YAML-parsed."""
    if "=" not in text:
        raise LmlabError(f"--set {text!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise LmlabError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def overrides_to_dict(overrides: typing.Iterable[str]) -> dict:
    out: dict[str, Any] = {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LmlabError(f"--set {text!r}: '{part}' was already set to a value")
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise LmlabError(f"{path}: cannot read config file ({err.strerror or err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LmlabError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmlabError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: typing.Iterable[str] = (),
                base: dict | None = None) -> Any:
    """Build ``cls`` (a dataclass, possibly nested) from ``base`` < ``yaml_path`` < ``--set`` overrides."""
    merged: dict = {}
    if base:
        merged = _validate(cls, base, "", "base config")
    if yaml_path is not None:
        merged = deep_merge(merged, _validate(cls, read_yaml(yaml_path), "", str(yaml_path)))
    over = overrides_to_dict(overrides)
    if over:
        merged = deep_merge(merged, _validate(cls, over, "", "--set"))
    return _construct(cls, merged)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def dump_config(instance: Any) -> dict:
    """A dataclass instance -> plain dict (tuples become lists) that ``load_config(base=...)`` reads back."""
    return _plain(instance)


def save_config(instance: Any, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (saved beside every run as ``config.yaml``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dump_config(instance), sort_keys=False))
    tmp.replace(path)
    return path
