"""One way to read configuration: YAML files and ``key=value`` overrides into typed dataclasses, through
OmegaConf structured configs (``OmegaConf.structured`` / ``merge`` / ``update`` / ``to_object``).

Used by training (stage configs, ``training.config``), evaluation (suite files and ``--set`` task
overrides, ``evaluation.suites``) and the benchmarks (which read the stage configs through training's
loader), so the same YAML gives the same values everywhere:

* YAML is read with one loader (``load_yaml`` / ``parse_yaml_value``): YAML 1.2 booleans (only
  ``true`` / ``false``; ``yes``, ``no``, ``on``, ``off`` are strings, so a language code ``no`` stays
  Norwegian), ``1e-4`` is a number (YAML 1.1 reads it as a string), no timestamps, duplicate keys are
  errors.
* Values then convert as the dataclass field's type says (OmegaConf's rules): ``"10"`` -> 10 for an int,
  ``"no"`` / ``"yes"`` -> False / True for a bool field, a number -> its text for a str field (quote text
  with leading zeros, ``revision: '00123'``).
* Unknown keys, wrong types and missing required values are a ``ConfigError`` naming the dotted key;
  so are values outside a field's range, declared with ``checked(..., check=...)`` (``positive``,
  ``at_least(1)``, ``one_of(...)``, ...) and checked after the merge (``check_values``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

__all__ = [
    "ConfigError",
    "at_least",
    "between",
    "build",
    "check_values",
    "checked",
    "each",
    "load_yaml",
    "non_negative",
    "one_of",
    "parse_overrides",
    "parse_yaml_value",
    "positive",
    "to_dict",
    "to_yaml",
]

T = TypeVar("T")
Check = Callable[[Any], "str | None"]
"""A range check: None when the value is fine, else what it must be (``"> 0 and finite"``)."""


class ConfigError(ValueError):
    """A config file or override that does not fit the schema. The message names the dotted key; ``key``
    holds it and ``problem`` says what is wrong ("unknown", "type", "missing", "range"), where known."""

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.key, self.problem = key, problem


# --------------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and exponent floats, without timestamps, refusing duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL, _FLOAT, _TIMESTAMP = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml_value(text: str) -> Any:
    """A YAML document (a file's text, or the value of one override) with the shared loader."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}") from err


def load_yaml(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return parse_yaml_value(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def parse_overrides(items: Iterable[str], schema: Any = None) -> list[tuple[str, Any]]:
    """``["train.steps=10", "peft={r: 4}"]`` -> ``[("train.steps", 10), ("peft", {"r": 4})]``: each value is
    YAML (an empty value is null), except that a text field of ``schema`` takes a scalar as written
    (``revision=00123`` stays ``"00123"``, ``language=no`` stays ``"no"``)."""
    overrides = []
    for item in items:
        key, equals, text = item.partition("=")
        if not equals:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = parse_yaml_value(text) if text.strip() else None
        except ConfigError as err:
            raise ConfigError(f"override {item!r}: {err}") from err
        if schema is not None and value is not None and not isinstance(value, (dict, list)):
            if _type_at(schema, _split_key(key)) is str:
                value = text.strip()
        overrides.append((key, value))
    return overrides


# --------------------------------------------------------------------------------------------------
# Range checks
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> str | None:
    return None if _number(value) and value > 0 else "> 0 and finite"


def non_negative(value: Any) -> str | None:
    return None if _number(value) and value >= 0 else ">= 0 and finite"


def at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        return None if _number(value) and value >= minimum else f">= {minimum}"

    return check


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """``low <= value <= high``, with either end open."""
    text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Any) -> str | None:
        if not _number(value):
            return text
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else text

    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"one of {list(choices)}"

    return check


def each(check: Check, *, length: int | None = None) -> Check:
    """Every item of a list passes ``check`` (and the list has ``length`` items, if given)."""

    def check_all(values: Any) -> str | None:
        if length is not None and len(values) != length:
            return f"a list of {length} values"
        problems = [problem for problem in map(check, values) if problem]
        return f"a list of values {problems[0]}" if problems else None

    return check_all


def checked(default: Any = dataclasses.MISSING, *, check: Check, default_factory: Any = dataclasses.MISSING):
    """A dataclass field whose value ``check_values`` validates (None passes where the type allows it)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"check": check})


def check_values(obj: Any, path: str = "") -> None:
    """Run every field's ``check`` in the dataclass tree ``obj``; the first failure is a ``ConfigError``
    naming the dotted key and the bad value."""
    for f in dataclasses.fields(obj):
        key = f"{path}.{f.name}" if path else f.name
        value = getattr(obj, f.name)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"'{key}' must be {problem}, got {value!r}", key=key, problem="range")
        items = value if isinstance(value, (list, tuple)) else [value]
        for index, item in enumerate(items):
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                check_values(item, f"{key}.{index}" if item is not value else key)


# --------------------------------------------------------------------------------------------------
# Building a typed config
# --------------------------------------------------------------------------------------------------


def build(schema: type[T], *layers: Mapping | None, overrides: Sequence[tuple[str, Any]] = ()) -> T:
    """``schema`` (a dataclass) filled from ``layers`` (plain mappings, later ones win; lists are replaced,
    mappings merged) and then the dotted ``overrides``; its range checks run last.

    Raises ``ConfigError`` naming the dotted key for an unknown key, a value of the wrong type, a missing
    required value or a value out of range."""
    try:
        config = OmegaConf.structured(schema)
        for layer in layers:
            if layer is None:
                continue
            if not isinstance(layer, Mapping):
                raise ConfigError(f"a config must be a mapping, got {type(layer).__name__}: {layer!r}")
            _check_list_items(schema, layer, "")
            config = OmegaConf.merge(config, layer)
        for key, value in overrides:
            _check_override(schema, key, value)
            _make_parents(config, schema, key)
            OmegaConf.update(config, key, value, merge=True)
        obj = OmegaConf.to_object(config)
    except OmegaConfBaseException as err:
        raise _config_error(schema, err, "") from None
    check_values(obj)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists (JSON- and YAML-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def to_yaml(obj: Any) -> str:
    """YAML of a dataclass tree that ``build`` reads back to the same values (strings such as ``no`` are
    quoted)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(obj)))


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _type_at(schema: Any, parts: Sequence[str]) -> Any:
    """The annotation at a dotted path in ``schema`` (Any where it cannot be told)."""
    hint: Any = schema
    for part in parts:
        hint = _strip_optional(hint)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            if part not in hints:
                return Any
            hint = hints[part]
        elif origin in (list, tuple) and args:
            hint = args[0]
        elif origin is dict and len(args) == 2:
            hint = args[1]
        else:
            return Any
    return _strip_optional(hint)


def _split_key(key: str) -> list[str]:
    return [part for part in re.split(r"[.\[\]]+", key) if part]


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint in (list, tuple) or origin in (list, tuple):
        return "a list"
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return f"of type {getattr(hint, '__name__', hint)}"


def _config_error(schema: Any, err: OmegaConfBaseException, prefix: str) -> ConfigError:
    key = ".".join(_split_key(prefix + "." + str(err.full_key or err.key or "")))
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and "not in" in str(err.msg):
        parent = _split_key(key)[:-1]
        owner = _type_at(schema, parent)
        where = ".".join(parent)
        valid = sorted(f.name for f in dataclasses.fields(owner)) if dataclasses.is_dataclass(owner) else []
        return ConfigError(
            f"unknown config key '{key}'; valid keys{' of ' + where if where else ''}: {valid}", key=key, problem="unknown"
        )
    if isinstance(err, MissingMandatoryValue):
        return ConfigError(f"missing required config key '{key}'", key=key, problem="missing")
    hint = _type_at(schema, _split_key(key))
    if hint is not Any:
        value = err.value if not isinstance(err.value, (DictConfig, ListConfig)) else OmegaConf.to_container(err.value)
        return ConfigError(f"'{key}' must be {_describe(hint)}, got {value!r}", key=key, problem="type")
    return ConfigError(f"'{key}': {err.msg}", key=key)


def _check_list_items(schema: Any, data: Any, path: str) -> None:
    """Merge every item of a list of dataclasses on its own first: OmegaConf's errors inside such items
    do not say which item (``sources.0.pth``), these do."""
    hint = _type_at(schema, _split_key(path)) if path else schema
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(data, Mapping) and dataclasses.is_dataclass(hint):
        for name, value in data.items():
            if isinstance(value, (Mapping, list)):
                _check_list_items(schema, value, f"{path}.{name}" if path else str(name))
    elif isinstance(data, list) and origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        for index, item in enumerate(data):
            try:
                OmegaConf.merge(OmegaConf.structured(args[0]), item)
            except OmegaConfBaseException as err:
                raise _config_error(schema, err, f"{path}.{index}") from None


def _make_parents(config: DictConfig, schema: Any, key: str) -> None:
    """Before ``OmegaConf.update`` sets ``key``: an optional section that is null along the way gets its
    defaults (``peft.r=4`` with ``peft: null``), and a list index past the end is an error."""
    parts = _split_key(key)
    for depth in range(1, len(parts)):
        where = ".".join(parts[:depth])
        node = OmegaConf.select(config, where, default=None)
        if isinstance(node, ListConfig) and parts[depth].isdigit() and int(parts[depth]) >= len(node):
            raise ConfigError(f"cannot set '{key}': '{where}' has {len(node)} item(s)")
        hint = _type_at(schema, parts[:depth])
        if node is None and dataclasses.is_dataclass(hint):
            OmegaConf.update(config, where, OmegaConf.structured(hint), merge=False)


def _check_override(schema: Any, key: str, value: Any) -> None:
    parts = _split_key(key)
    if isinstance(value, (Mapping, list)):
        _check_list_items(schema, value, ".".join(parts))
    # a list item of a list of dataclasses, set as a whole (data.text.sources.0={...})
    if parts and parts[-1].isdigit() and isinstance(value, Mapping):
        item = _type_at(schema, parts)
        if dataclasses.is_dataclass(item):
            try:
                OmegaConf.merge(OmegaConf.structured(item), value)
            except OmegaConfBaseException as err:
                raise _config_error(schema, err, key) from None
