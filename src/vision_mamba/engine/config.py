"""Typed run configurations, shared by the training commands: a dataclass's fields are the schema; YAML files (with
``base:`` chains) and ``key=value`` overrides are merged over its defaults; every key and value is checked, with a
message that names the key (and the nearest known ones) or says what the value should be."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import yaml

__all__ = ["BUILTIN_CONFIGS", "ConfigError", "TypedConfig", "absolute_path", "builtin_configs", "check_keys",
           "coerce", "constructed", "find_config", "load_yaml", "parse_overrides"]

# The recipes shipped with the package (one YAML per model and dataset), named as configs/<dataset>/<name>.yaml
BUILTIN_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and says why."""


class TypedConfig:
    """Mixin for a dataclass of run settings: its fields are the keys, ``from_dict`` checks and converts values and
    calls ``validate()`` (which the dataclass defines)."""

    @classmethod
    def keys(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def normalise(cls, value: Any, hint: Any) -> Any:
        """A hook for shorthand values (before type checking); the identity by default."""
        return value

    @classmethod
    def from_dict(cls, values: Dict[str, Any], source: str = "config"):
        check_keys(values, cls.keys(), source)
        hints = typing.get_type_hints(cls)
        config = cls(**{k: coerce(k, cls.normalise(v, hints[k]), hints[k], source) for k, v in values.items()})
        config.validate()
        return config


def absolute_path(path: Optional[str]) -> Optional[str]:
    """``path`` made absolute (``~`` expanded), None as None: a run's config records the data it read that way, so
    that the run resumes, and its weights evaluate, from any working directory."""
    return None if path is None else str(Path(path).expanduser().resolve())


def check_keys(values: Dict[str, Any], known: Sequence[str], source: str) -> None:
    """Raise ConfigError for keys of ``values`` not in ``known``, suggesting the nearest known ones."""
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(known), n=3)
            hints.append(f"'{k}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(f"{source}: unknown config key{'s' if len(unknown) > 1 else ''} {'; '.join(hints)}. "
                          f"Known keys: {', '.join(known)}")


def coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` checked against the type ``hint`` of field ``key``: ints are accepted for floats, numbers written as
    strings ('1e-4' is a string to YAML) are converted, 'true' / 'yes' / '1' are booleans."""
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: config key '{key}' must be {expected}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if bool in members and isinstance(value, bool):
            return value
        for member in members:
            try:
                return coerce(key, value, member, source)
            except ConfigError:
                pass
        raise fail(" or ".join(getattr(m, "__name__", str(m)) for m in members))
    if value is None:
        raise fail(f"a {getattr(hint, '__name__', hint)} (null is not allowed)")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise fail("true or false")
    if hint is int:
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise fail("an integer") from None
            if number.is_integer():
                return int(number)
        raise fail("an integer")
    if hint is float:
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise fail("a number") from None
        raise fail("a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail("a string")
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return [coerce(f"{key}[{i}]", v, args[0], source) for i, v in enumerate(value)] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    return value


def builtin_configs(group: str = "") -> List[str]:
    """The shipped configs' names (``configs/imagenette/vim_tiny.yaml``, ...), those under ``group`` if given."""
    return sorted(f"configs/{p.relative_to(BUILTIN_CONFIGS).as_posix()}"
                  for p in (BUILTIN_CONFIGS / group).rglob("*.yaml"))


def find_config(path: "str | Path") -> Path:
    """The YAML file ``path`` names: that file where it exists, else the shipped config of that name
    (``configs/imagenette/vim_tiny.yaml``, also without ``configs/`` or ``.yaml``), so that the recipes' names work
    from any directory and in an installed package. A ConfigError lists the shipped ones otherwise."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    if not given.is_absolute():
        parts = given.parts[1:] if given.parts[:1] == ("configs",) else given.parts
        if parts:
            name = Path(*parts)
            for candidate in (BUILTIN_CONFIGS / name, BUILTIN_CONFIGS / name.with_name(name.name + ".yaml")):
                if candidate.is_file():
                    return candidate
    group = given.parts[1] if given.parts[:1] == ("configs",) and len(given.parts) > 2 else ""
    shipped = builtin_configs(group if (BUILTIN_CONFIGS / group).is_dir() else "")
    raise ConfigError(f"config file not found: {path} (nor a shipped config of that name; shipped: "
                      f"{', '.join(shipped)})")


def config_text(path: Path) -> str:
    """The text of the config file ``path``; a ConfigError where it is no UTF-8 text (an image, a checkpoint, ...
    given as the config)."""
    try:
        return path.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path}: not a YAML file (not UTF-8 text: {e.reason} at byte {e.start})") from None


def load_yaml(path: "str | Path", known: Sequence[str], _seen: Optional[List[Path]] = None) -> Dict[str, Any]:
    """Read a YAML config file (a path, or a shipped config's name: :func:`find_config`), its ``base:`` chain first
    (a path relative to the file, or a shipped config's name, e.g. ``base: configs/imagenette/vim_tiny.yaml``);
    keys checked against ``known``. Returns the merged raw mapping."""
    path = find_config(path) if _seen is None else Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    seen = list(_seen or [])
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: its 'base' chain loops back to itself "
                          f"({' -> '.join(map(str, seen + [path.resolve()]))})")
    seen.append(path.resolve())
    text = config_text(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    merged: Dict[str, Any] = {}
    if base is not None:  # relative to this file; else a shipped config of that name (a recipe to build on)
        beside = path.parent / str(base)
        if not beside.is_file():
            try:
                beside = find_config(str(base))
            except ConfigError:
                raise ConfigError(f"config {path}: its base {base} is neither a file beside it ({beside}) nor a "
                                  f"shipped config (vision_mamba.engine.config.builtin_configs() lists them)") from None
        merged.update(load_yaml(beside, known, seen))
    check_keys(data, known, f"config {path}")
    merged.update(data)
    return merged


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """``['lr=2e-4', 'model_kwargs.depth=6']`` -> {'lr': '2e-4', 'model_kwargs.depth': 6} (values read as YAML;
    keys are checked by the caller, which knows its schema)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot read the value {text!r} ({e})") from e
    return out


def constructed(make, name: str, kwargs: Dict[str, Any]):
    """``make()`` (a model's constructor with configured keyword arguments), its TypeError (an argument it does
    not take) turned into a ConfigError naming the model and the arguments."""
    try:
        return make()
    except TypeError as e:
        raise ConfigError(f"{name}: its constructor refused the configured arguments {sorted(kwargs)} ({e})") from None
