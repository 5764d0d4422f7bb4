"""Typed, frozen configs built from defaults < config file (YAML or TOML) < command-line flags.

Each concern has one frozen dataclass; its defaults live there and nowhere else. A field's metadata may
carry ``help`` and ``flags`` (the option strings on the command line; default ``--field-name``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from maskray.errors import MaskrayError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str = "", flags: tuple[str, ...] = (), **kw) -> Any:
    """A dataclass field with command-line help and option strings."""
    md = {"help": help, "flags": flags}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=md, **kw)


# Flags that mean the same in every command that has them: declared here once, each config takes its field from
# these (a command's own wording is kept only where the meaning differs: seeds, sizes, steps).
Precision = typing.Literal["auto", "no", "bf16", "fp16"]


def overwrite_option() -> Any:
    return option(False, help="replace an output folder that already holds files")


def resume_option() -> Any:
    return option(False, help="continue an interrupted run in --out from its last checkpoint")


def threads_option() -> Any:
    return option(0, help="CPU threads for torch (0: torch's default); 1 is far faster when other processes "
                          "share the CPU (docs/evaluate.md)")


def precision_option() -> Any:
    return option("auto", help="autocast precision; auto: bf16 on the CPU and on GPUs that support it, fp16 with a "
                               "gradient scaler on older GPUs, none on MPS")


def fused_kernels_option(measured: str) -> Any:
    return option(True, help="CPU, bf16, channels_last: GroupNorm + SiLU in one kernel with its gradient (built on "
                             f"first use; {measured}); off elsewhere")


def option_like(cls: type, name: str) -> Any:
    """Option ``name`` of the config class ``cls`` (its default, help and flags), for a config that offers another
    config's option as a flag of its own: the option keeps one declaration, in ``cls``."""
    f = cls.__dataclass_fields__[name]
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def data_option() -> Any:
    return option("", help="dataset folder in the native layout")


def run_folder_option() -> Any:
    return option("", help="run folder to write")


def train_split_option() -> Any:
    return option("train", help="split to train on")


def stop_after_option() -> Any:
    return option(None, help="stop (with a checkpoint) after this many steps in this invocation")


def load_config_file(path: str | os.PathLike | None) -> dict:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON config file to a dict."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise MaskrayError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise MaskrayError(f"{path}: unknown config type (allowed: .yaml, .yml, .toml, .json)")
    except MaskrayError:
        raise
    except Exception as e:
        raise MaskrayError(f"{path}: cannot parse config ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise MaskrayError(f"{path}: config must be a mapping of option to value")
    return data


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip ``Optional``; return (type, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(name: str, value: Any, tp: Any, where: str, text: bool | None = None) -> Any:
    """``value`` as ``tp``. ``text``: whether strings are to be parsed (command-line flags, comma lists); a
    config file states its types, so a number given there as a string ("64") is refused."""
    text = (where == "command line") if text is None else text
    tp, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise MaskrayError(f"{where}: option '{name}' may not be empty")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise MaskrayError(f"{where}: option '{name}' is {value!r}; allowed: {', '.join(map(str, choices))}")
            return value
        if origin is tuple:
            args = typing.get_args(tp)
            item = args[0] if args else str
            if isinstance(value, str):
                return tuple(_convert(name, v.strip(), item, where, True) for v in value.split(",") if v.strip())
            return tuple(_convert(name, v, item, where) for v in value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if tp is int and isinstance(value, str):
                if not text:
                    raise ValueError(value)
                return int(value)
            if tp is int and isinstance(value, bool):
                raise ValueError(value)
            return tp(value)
        if tp is Path:
            return Path(value)
    except MaskrayError:
        raise
    except (TypeError, ValueError):
        raise MaskrayError(f"{where}: option '{name}' has value {value!r}; expected {getattr(tp, '__name__', tp)}") from None
    return value


def build(cls: type[T], file_values: dict | None = None, overrides: dict | None = None, where: str = "config") -> T:
    """Build ``cls`` from defaults, then ``file_values``, then ``overrides`` (``None`` values are skipped)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for source, src_where in ((file_values or {}, where), (overrides or {}, "command line")):
        for key, value in source.items():
            k = key.replace("-", "_")
            if k not in names:
                raise MaskrayError(f"{src_where}: unknown option '{key}' (known: {', '.join(sorted(names))})")
            if value is None and source is overrides:
                continue
            values[k] = _convert(k, value, hints[k], src_where)
    try:
        return cls(**values)
    except TypeError as e:
        raise MaskrayError(f"{where}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls``. Every flag defaults to ``None`` so the file can fill it."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flags = f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",)
        tp, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f.metadata.get("help", "")
        if default is not None and default != ():
            help_ = f"{help_} (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"
        if tp is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
            parser.add_argument(*flags, dest=f.name, default=None, choices=choices, help=help_,
                                metavar=None if choices else f.name.upper())


def from_args(cls: type[T], args: argparse.Namespace, skip: tuple[str, ...] = ()) -> T:
    """Build ``cls`` from ``--config`` (if any) and the parsed flags."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    overrides = {n: getattr(args, n, None) for n in names}
    cfg_path = getattr(args, "config", None)
    return build(cls, load_config_file(cfg_path), overrides, where=str(cfg_path or "config"))
