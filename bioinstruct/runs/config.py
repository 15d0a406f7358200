"""Stage configs: one dataclass per stage, filled from YAML and ``key=value`` overrides.

    cfg = load_config(TrainConfig, "configs/train/llama2/7b_lora.yaml",
                      ["lora.r=16", "data.max_length=1024"])

Values in overrides are parsed as YAML scalars (``16`` is an int, ``[a, b]`` a list,
``null`` is None). Every key is checked against the dataclass: an unknown key or a
value of the wrong type raises :class:`ConfigError` naming the source (file:line or
the override), the dotted key and, for unknown keys, the closest valid one. A float is
finite (``.nan`` and ``.inf`` are refused), and a field declared with :func:`ranged` (or
:func:`seed_field`) is within its range, checked before the config exists, so before any work:

    lr: float = ranged(3e-3, above=0)          # "key 'lr' must be > 0, got -1.0"
    seed: int = seed_field(0)                  # 0..2**32-1, what numpy and torch take
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union

import yaml

from ..errors import ConfigError
from ..io.rows import load_yaml, read_yaml

T = TypeVar("T")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        tp = _hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, key + "."))
    return keys


class FieldError(ValueError):
    """A config's __post_init__ refusing one field's value: the error names that key and
    where it was set (file:line or the override)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def at_least(section: Any, minimum: float, *names: str) -> None:
    """For a config's __post_init__: each named field is >= ``minimum`` (None passes: unset)."""
    for name in names:
        value = getattr(section, name)
        if value is not None and value < minimum:
            raise FieldError(name, f"must be >= {minimum}, got {value}")


SEED_MAX = 2 ** 32 - 1  # numpy's seeds; torch's and random's take more, so one range for all


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric key's valid values: >= low (> above), <= high."""
    low: float | None = None
    above: float | None = None
    high: float | None = None

    def problem(self, value: float) -> str | None:
        if ((self.low is not None and value < self.low) or (self.above is not None and value <= self.above)
                or (self.high is not None and value > self.high)):
            return f"must be {self}, got {value}"
        return None

    def __str__(self) -> str:
        low, above, high = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (self.low, self.above, self.high))
        if low is not None and high is not None:
            text = f"within {low}..{high}" if isinstance(self.low, int) else f"within [{low}, {high}]"
        elif above is not None and high is not None:
            text = f"within ({above}, {high}]"
        elif above is not None:
            text = f"> {above}"
        else:
            text = f">= {low}"
        return text


def ranged(default: Any = dataclasses.MISSING, *, low: float | None = None, above: float | None = None,
           high: float | None = None) -> Any:
    """A dataclass field whose value the config loader checks against a :class:`Range`."""
    return dataclasses.field(default=default, metadata={"range": Range(low, above, high)})


def seed_field(default: int = 0) -> Any:
    return ranged(default, low=0, high=SEED_MAX)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def closest_key(key: str, valid: list[str]) -> str | None:
    """The valid key nearest to ``key``: by whole dotted path, else by its last part."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return match[0]
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[match[0]] if match else None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


class _Sources(dict):
    """Where each dotted key was set (``file:line`` or the override); unset keys
    report their closest parent that was set."""

    def __missing__(self, key: str) -> str:
        key = key.split("[", 1)[0]
        # A key set below this one (task_data.x.path for task_data.x) is where it came from.
        child = next((v for k, v in self.items() if k.startswith(key + ".")), None)
        while key:
            if dict.__contains__(self, key):
                return dict.__getitem__(self, key)
            key = key.rsplit(".", 1)[0] if "." in key else ""
        return child or "config"


@dataclasses.dataclass
class _Builder:
    root: type
    sources: _Sources

    def build(self, cls: type[T], data: dict[str, Any], prefix: str = "", default: Any = None) -> T:
        """``cls`` from ``data`` on top of ``default`` (the enclosing config's value for this
        section, so ``generate.llm.base_url=X`` keeps generate's own ``llm`` defaults)."""
        hints = _hints(cls)
        kwargs = ({f.name: getattr(default, f.name) for f in dataclasses.fields(cls)}
                  if isinstance(default, cls) else {})
        for name, value in data.items():
            key = prefix + str(name)
            if name not in {f.name for f in dataclasses.fields(cls)}:
                # Search all keys of the top-level config, so a key put in the wrong
                # section ('r' instead of 'lora.r') is still found.
                hint = closest_key(key, _all_keys(self.root))
                suggestion = f" (closest valid key: '{hint}')" if hint else ""
                raise ConfigError(f"{self.sources[key]}: unknown key '{key}'{suggestion}")
            kwargs[name] = self.coerce(value, hints[name], key, kwargs.get(name))
            bounds = next(f.metadata.get("range") for f in dataclasses.fields(cls) if f.name == name)
            problem = bounds.problem(kwargs[name]) if bounds and kwargs[name] is not None else None
            if problem:
                raise ConfigError(f"{self.sources[key]}: key '{key}' {problem}")
        for f in dataclasses.fields(cls):
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default and f.name not in kwargs:
                raise ConfigError(f"{self.sources[prefix.rstrip('.')]}: missing required key '{prefix}{f.name}'")
        try:
            return cls(**kwargs)
        except FieldError as e:
            key = prefix + e.field
            raise ConfigError(f"{self.sources[key]}: key '{key}' {e}") from None
        except ValueError as e:
            # Other __post_init__ checks concern several fields: name the section.
            section = prefix.rstrip(".")
            where = self.sources[section or "config"]
            raise ConfigError(f"{where}: {section + ': ' if section and section != where else ''}{e}") from None

    def coerce(self, value: Any, tp: Any, key: str, default: Any = None) -> Any:
        """Check ``value`` against the annotation ``tp``; return it in canonical form."""

        def fail() -> typing.NoReturn:
            raise ConfigError(f"{self.sources[key]}: key '{key}' expects {_type_name(tp)}, "
                              f"got {value!r} ({type(value).__name__})")

        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            if len(args) == 2 and type(None) in args:  # Optional: the one type's own message
                return self.coerce(value, next(a for a in args if a is not type(None)), key)
            for arg in args:
                if arg is not type(None):
                    try:
                        return self.coerce(value, arg, key)
                    except ConfigError:
                        pass
            fail()
        if origin is Literal:
            if value in typing.get_args(tp):
                return value
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ConfigError(f"{self.sources[key]}: key '{key}' must be one of {choices}, got {value!r}")
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                fail()
            (item_tp, *_) = typing.get_args(tp) or (Any,)
            return [self.coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                fail()
            _, val_tp = typing.get_args(tp) or (Any, Any)
            return {str(k): self.coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                fail()
            return self.build(tp, value, key + ".", default)
        if tp is bool:
            if isinstance(value, bool):
                return value
            fail()
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            fail()
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise ConfigError(f"{self.sources[key]}: key '{key}' expects a finite number, got {value!r}")
                return float(value)
            fail()
        if tp is str:
            # YAML reads `seed_file: 2024` as an int; names and paths are strings,
            # so accept plain numbers and keep their text.
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            fail()
        raise TypeError(f"unsupported config annotation {tp!r} for key '{key}'")


def default_instance(cls: type) -> Any:
    try:
        return cls()
    except (TypeError, ValueError):  # required keys: nothing to start from
        return None


def _yaml_key_lines(path: Path) -> dict[str, int]:
    """Map every dotted key of a YAML mapping to the line it is on."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. lora.r=16)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = prefix + str(k)
        out[key] = v
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                flags: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from its defaults, then the YAML file at ``path``, then ``flags``
    (typed values from a verb's own options, e.g. ``--in``), then ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    sources = _Sources()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}:1: a config file must be a mapping of keys to values")
        lines = _yaml_key_lines(path)
        sources.update({k: f"{path}:{lines.get(k, 1)}" for k in _flatten(tree)})
    for key, value in (flags or {}).items():
        _set_dotted(tree, key, value)
        sources[key] = f"command-line option for '{key}'"
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        sources[key] = f"override '{text}'"
        if isinstance(value, dict):
            sources.update({f"{key}.{k}": f"override '{text}'" for k in _flatten(value)})
    return _Builder(cls, sources).build(cls, tree, default=default_instance(cls))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config arguments every stage verb takes."""
    parser.add_argument("--config", metavar="FILE.yaml", help="stage config file (defaults apply to keys it omits)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied after --config, e.g. lora.r=16")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without running")
    parser.add_argument("--force", action="store_true",
                        help="redo the stage from scratch (its old output is set aside, and restored if the run fails)")


def config_from_args(cls: type, args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Any:
    """The config of a verb: --config, then the verb's own options (``flags``, unset ones
    left out), then overrides; --print-config prints it and exits."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    cfg = load_config(cls, args.config, args.overrides, flags)
    if args.print_config:
        sys.stdout.write(dump_config(cfg))
        raise SystemExit(0)
    return cfg
