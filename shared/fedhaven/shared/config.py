"""Typed, frozen configuration: nested dicts in, dataclasses out, every problem listed at once."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """Raised with every problem found in a configuration, one per line."""

    def __init__(self, problems: Sequence[str], *, source: str = "configuration") -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


def bounds(
    *, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> dict[str, float]:
    """Field metadata for numeric range checks, used as `field(metadata=bounds(gt=0))`."""
    return {k: v for k, v in {"gt": gt, "ge": ge, "lt": lt, "le": le}.items() if v is not None}


_OPS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
        "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "nothing (omit the key)"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Return `value` converted to `tp`, or append a problem and return None."""
    origin = get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a table of settings, got {value!r}")
            return None
        return _build(tp, value, path, problems)
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(get_args(tp)[0]):
            return value
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        # Try exact types first so `int | float` keeps an int as an int.
        for arg in sorted(args, key=lambda a: 0 if a is type(value) else 1):
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _coerce(arg, value, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return None
        (item_tp, *_rest) = get_args(tp)
        before = len(problems)
        items = tuple(_coerce(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
        return items if len(problems) == before else None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # TOML accepts nan; no setting of ours means anything with it
                problems.append(f"{path}: expected a number, got nan")
                return None
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, float) and (value != value or abs(value) == float("inf")):  # bare nan / inf: TOML floats
            return str(value)
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, problems: list[str]) -> T | None:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    before = len(problems)
    why_unknown = getattr(cls, "unknown_hints", {})
    for key in data:
        if key not in fields:
            valid = ", ".join(sorted(fields))
            problems.append(f"{prefix}{key}: {why_unknown[key]}" if key in why_unknown
                            else f"{prefix}{key}: unknown setting (valid here: {valid})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{name}: missing (required)")
            continue
        path = f"{prefix}{name}"
        tp = hints[name]
        sub_prefix = f"{path}."
        value = (
            _build(tp, data[name], sub_prefix, problems)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(data[name], Mapping)
            else _coerce(tp, data[name], path, problems)
        )
        if value is None and data[name] is not None:
            continue
        for op, bound in f.metadata.items():
            if op in _OPS and isinstance(value, (int, float)) and not _OPS[op][0](value, bound):
                problems.append(f"{path}: must be {_OPS[op][1]} {bound:g}, got {value!r}")
        kwargs[name] = value
    if len(problems) > before:
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "problems", None)
    if callable(check):
        problems.extend(f"{prefix}{p}" for p in check())
    return obj if len(problems) == before else None


def parse(cls: type[T], data: Mapping[str, Any], *, source: str = "configuration") -> T:
    """Build `cls` from `data`; raise ConfigError listing every problem found."""
    problems: list[str] = []
    obj = _build(cls, data, "", problems)
    if problems or obj is None:
        raise ConfigError(problems or ["invalid configuration"], source=source)
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as nested plain dicts, tuples as lists, None values left out (TOML has no null)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)
                    if getattr(v, f.name) is not None}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    out = conv(obj)
    assert isinstance(out, dict)
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, table by table."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict[str, Any]:
    """`a.b=value` as a nested dict; the value is read as TOML, or as a bare string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([f"{item!r}: expected key=value, e.g. train.lr=0.05"], source="override")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return unflatten({key: value})


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as one flat dict with dotted keys (Flower's run and message configs are flat)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys back into nested tables."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, naming the file and line on a syntax error."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found"], source=str(p)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{p}: not valid TOML ({exc})"], source=str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not a UTF-8 text file (byte {exc.start}); TOML files are UTF-8"],
                          source=str(p)) from None
    except IsADirectoryError:
        raise ConfigError([f"{p}: is a folder, not a TOML file"], source=str(p)) from None
