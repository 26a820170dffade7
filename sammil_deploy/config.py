"""Generic config plumbing: frozen dataclasses built from TOML tables, CLI overrides on top.

Each stage defines its own frozen dataclass next to its code (``tissue.TissueConfig``, ...). This module only
knows how to build any of them from a mapping, reject unknown keys with a "did you mean" hint, apply dotted
overrides, and serialise them back to plain dicts (stored in HDF5 attrs, checkpoints and reports).
:func:`load_config` is the one way a config file is read (stage configs, training recipes, export build
profiles, benchmark suites): its errors name the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from sammil_deploy.errors import ConfigError

T = TypeVar("T")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; errors name the file and the line."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def load_config(
    cls: type[T],
    path: Path | None = None,
    *,
    table: str | None = None,
    table_hint: str | None = None,
    section: str = "",
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Config ``cls`` from defaults < the TOML file ``path`` < dotted ``overrides`` (``None`` values skipped).

    Args:
        cls: The frozen config dataclass.
        path: The TOML file (``None``: defaults and overrides only).
        table: Read this table (``[infer]``) when the file has one, else the file's top level.
        table_hint: With ``table``: the file must have the table; this says where to see the layout.
        section: Prefix of key names in errors (``infer`` → ``'infer.batch_size'``).
        prepare: Edits the file's mapping before it is built (presets); called with ``{}`` when there is no file.
        overrides: ``{"features.batch_size": 32}`` (CLI flags).

    Raises:
        ConfigError: Unreadable file, missing table, unknown key (with the closest valid names) or invalid value;
            the message starts with the file when the problem is in it.
    """
    data = read_toml(path) if path is not None else {}
    if table is not None and isinstance(data.get(table), Mapping):
        data = dict(data[table])
    elif table_hint is not None and path is not None:
        raise ConfigError(f"{path}: no [{table}] table; {table_hint}")
    try:
        cfg = from_mapping(cls, prepare(data) if prepare is not None else data, section=section)
    except ConfigError as err:
        if path is None:
            raise
        raise ConfigError(f"{path}: {err}") from None
    return apply_overrides(cfg, dict(overrides or {}))


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, *, section: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields take nested tables.

    Raises:
        ConfigError: On an unknown key (with the closest valid names) or a value the dataclass rejects.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        where = f"{section}.{key}" if section else key
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key {where!r}{hint}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _dataclass_type(hints[name])
        child = f"{section}.{name}" if section else name
        if sub is not None and isinstance(value, Mapping):
            kwargs[name] = from_mapping(sub, value, section=child)
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"invalid config for {section or cls.__name__}: {err}") from None


def apply_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Return ``cfg`` with dotted-path overrides (``{"patch.patch_size_px": 256}``); ``None`` values are skipped."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        cfg = _replace_path(cfg, dotted.split("."), value, dotted)
    return cfg


def _replace_path(obj: Any, path: list[str], value: Any, dotted: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    if path[0] not in names:
        close = difflib.get_close_matches(path[0], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(names)}"
        raise ConfigError(f"unknown config key {dotted!r}{hint}")
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    child = _replace_path(getattr(obj, path[0]), path[1:], value, dotted)
    return dataclasses.replace(obj, **{path[0]: child})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-serialisable dict of a (nested) config dataclass."""
    return json.loads(to_json(cfg))


def to_json(cfg: Any) -> str:
    """Stable JSON (sorted keys) of a config dataclass; used for hashes and file attrs."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None
