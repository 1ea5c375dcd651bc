"""Typed stage configs: one frozen dataclass per stage, values from YAML files and CLI flags.

Each field is documented once, in ``opt(help=...)``; the CLI builds its flags from the same
metadata, so a field, its flag and its help text cannot drift apart. Resolution order:
dataclass defaults (the embedded default) < stage defaults < YAML file < CLI flags.
Unknown keys are an error that names the key (and the closest known one).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from gftrepro.errors import GftError, shown


def opt(default: Any, help: str, *, flag: str | None = None, versioned: bool | str = True) -> Any:
    """A config field. ``versioned=False`` for fields that cannot change the stage's outputs
    (sharding of work, memory knobs): they are left out of the version hash. ``versioned="unless-default"``
    for a field added after runs exist: it enters the hash only when set away from its default, so
    those runs keep their version ids."""
    kw = {"default_factory": lambda: default} if isinstance(default, list | dict) else {"default": default}
    return dataclasses.field(metadata={"help": help, "flag": flag, "versioned": versioned}, **kw)


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` stays ``list[str]``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Check and convert one value; the error names the field and the expected type."""
    nullable = type(None) in typing.get_args(tp)
    if value is None:
        if nullable:
            return None
        raise GftError(f"config key '{name}' must not be empty")
    bt = base_type(tp)
    if typing.get_origin(bt) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise GftError(f"config key '{name}' must be a list of strings, got {shown(value)}")
        return list(value)
    if bt is dict:
        return coerce_mapping(name, value)
    if bt is bool:
        if isinstance(value, bool):
            return value
        raise GftError(f"config key '{name}' must be true or false, got {shown(value)}")
    if bt is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if bt is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if bt is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise GftError(f"config key '{name}' must be of type {bt.__name__}, got {shown(value)}")


def coerce_mapping(name: str, value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    raise GftError(f"config key '{name}' must be a mapping, got {shown(value)}")


def require(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed (condition, message) check as a GftError."""
    for ok, message in checks:
        if not ok:
            raise GftError(message)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GftError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise GftError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. an integer of more than 4,300 digits
        raise GftError(f"config file {path} is not valid YAML: {str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise GftError(f"config file {path} is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise GftError(f"config file {path} must hold a mapping of keys to values")
    return data


def check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise GftError(f"unknown config key {shown(key)} in {where}{hint}")


def build(cls: type, *layers: dict[str, Any]) -> Any:
    """Merge layers left to right into ``cls``, checking every value's type."""
    hints = field_types(cls)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    values = {k: coerce(k, v, hints[k]) for k, v in merged.items()}
    return cls(**values)


def load(cls: type, path: Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None,
         section: str | None = None) -> Any:
    """Resolve a stage config: defaults < file (or its ``section``) < CLI overrides."""
    file_layer: dict[str, Any] = {}
    if path is not None:
        file_layer = read_yaml(path)
        if section is not None and section in file_layer and isinstance(file_layer[section], dict):
            file_layer = file_layer[section]
        check_keys(cls, file_layer, str(path))
    check_keys(cls, overrides, "command-line flags")
    config = build(cls, defaults or {}, file_layer, overrides)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def versioned_dict(config: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        mode, value = f.metadata.get("versioned", True), getattr(config, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if mode is True or (mode == "unless-default" and value != default):
            out[f.name] = value
    return out


def content_hash(payload: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able payload (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def within_run(value: Any, run_dir: Path) -> Any:
    """``value`` with every string naming a path inside ``run_dir`` written as ``run:<relative path>``."""
    if isinstance(value, dict):
        return {k: within_run(v, run_dir) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [within_run(v, run_dir) for v in value]
    if isinstance(value, str):
        for root in {str(run_dir), str(run_dir.resolve())}:
            if value.startswith(f"{root}/"):
                return f"run:{value[len(root) + 1:]}"
    return value


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True, width=100)


def changed(config: Any, skip: tuple[str, ...] = (), baseline: Any = None) -> dict[str, Any]:
    """Every field that differs from ``baseline`` (default: the class defaults), except the ``skip``
    ones, with its value: what a stage's header line shows."""
    out = {}
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        if baseline is not None:
            default = getattr(baseline, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        value = getattr(config, f.name)
        if value != default:
            out[f.name] = value
    return out
