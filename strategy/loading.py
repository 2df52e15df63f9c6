"""Building a strategy from a spec string and its parameters.

    load("examples.mean_reversion:MeanReversion", environ=os.environ, toml=Path("p.toml"))

`spec` is `package.module:Class`, importable: installed, on `PYTHONPATH`, or under the working
directory with `python -m worker`; empty means the shipped strategy. Parameters, later wins:
the model's defaults, the TOML file (`name = value` lines, names as the model's fields,
case-insensitive), the environment (`Params.env_name(field)`), then `overrides` (field name ->
value). Every problem is a `ParamError` whose one-line message names the setting, variable or
file at fault. Nothing here reads the process environment: the caller passes it.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from strategy.base import ParamError, Strategy, StrategyParams

#: the shipped strategy
DEFAULT_SPEC = "strategy.momentum:MomentumBreakout"
#: environment variables of this namespace that are settings, not parameters
RESERVED = frozenset({"STRATEGY", "STRATEGY_PARAMS"})
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def load(
    spec: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    toml: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    setting: str = "STRATEGY",
    toml_setting: str = "STRATEGY_PARAMS",
) -> Strategy[Any]:
    """The strategy `spec` names, on its validated parameters. `setting` / `toml_setting` are
    how error messages name the spec and the file (e.g. `--strategy` for a command's flag)."""
    cls = strategy_class(spec, setting=setting)
    params_cls: type[StrategyParams] = cls.Params
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    if toml:
        for field, value in read_toml(Path(toml), params_cls, toml_setting).items():
            values[field] = value
            names[field] = f"{toml_setting} {toml}: {field}"
    for field, value in env_values(params_cls, environ or {}, spec or DEFAULT_SPEC).items():
        values[field] = value
        names[field] = params_cls.env_name(field)
    for field, value in (overrides or {}).items():
        values[field] = value
        names.setdefault(field, params_cls.env_name(field))
    params = params_cls.build(values, names)
    try:
        strategy: Strategy[Any] = cls(params)
    except ParamError:
        raise
    except Exception as exc:
        raise ParamError(f"{setting}: {spec} failed to start: {_first_line(exc)}") from None
    if not isinstance(strategy, Strategy):
        raise ParamError(f"{setting}: {spec} does not implement the Strategy protocol")
    return strategy


def strategy_class(spec: str | None, *, setting: str = "STRATEGY") -> Any:
    """The class `spec` names, checked to be a strategy (`ParamError` naming `setting`)."""
    spec = (spec or "").strip() or DEFAULT_SPEC
    if not _SPEC.fullmatch(spec):
        raise ParamError(f"{setting}: must be package.module:Class, got {spec!r}")
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error, or any error the module raises at import
        raise ParamError(f"{setting}: cannot import {module_name!r}: {_first_line(exc)}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ParamError(f"{setting}: module {module_name!r} has no {class_name!r}")
    params_cls = getattr(cls, "Params", None)
    if not (isinstance(params_cls, type) and issubclass(params_cls, StrategyParams)):
        raise ParamError(
            f"{setting}: {spec} is not a strategy (no Params class deriving StrategyParams)"
        )
    missing = [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if not isinstance(cls, type) or missing:
        raise ParamError(f"{setting}: {spec} does not implement the Strategy protocol "
                         f"(missing {', '.join(missing) or 'a class'})")  # fmt: skip
    return cls


_METHODS = ("with_params", "candidates", "buy_signal", "sell_signal")


def env_values(
    params_cls: type[StrategyParams], environ: Mapping[str, str], spec: str
) -> dict[str, str]:
    """The parameters set in `environ`, as strings by field name. A variable under the
    strategy namespace (`STRATEGY_*`) that is not one of its parameters is a `ParamError`:
    a misspelt parameter would otherwise run silently on its default."""
    by_env = {params_cls.env_name(f): f for f in params_cls.model_fields}
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith("STRATEGY_") and upper not in RESERVED and upper not in by_env:
            raise ParamError(f"{name}: not a parameter of {spec}")
    return {by_env[n.upper()]: v for n, v in environ.items() if n.upper() in by_env}


def read_toml(path: Path, params_cls: type[StrategyParams], setting: str) -> dict[str, Any]:
    """`name = value` lines of `path` by field name (a key may also be the parameter's
    environment name)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParamError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ParamError(f"{setting}: {path}: {exc}") from None
    fields = {f.lower(): f for f in params_cls.model_fields}
    fields |= {params_cls.env_name(f).lower(): f for f in params_cls.model_fields}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key.lower())
        if field is None:
            raise ParamError(f"{setting} {path}: {key}: not a parameter of this strategy")
        out[field] = value
    return out


def describe(params_cls: type[StrategyParams]) -> list[dict[str, Any]]:
    """One row per parameter: name, environment variable, type, default, bounds, description
    (for documentation, `params show` and a parameter search's ranges)."""
    rows = []
    for field, info in params_cls.model_fields.items():
        bounds = {
            key: getattr(m, key)
            for m in info.metadata
            for key in ("gt", "ge", "lt", "le")
            if getattr(m, key, None) is not None
        }
        rows.append(
            {
                "name": field,
                "env": params_cls.env_name(field),
                "type": getattr(info.annotation, "__name__", str(info.annotation)),
                "default": info.default,
                "bounds": bounds,
                "description": info.description or "",
            }
        )
    return rows


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
