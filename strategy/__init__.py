"""Strategies: the `Strategy` port (`strategy.base`), the shipped momentum strategy
(`strategy.momentum` over the vectorized scan in `strategy.scan` and the rules in
`strategy.signals`), and `load`, which builds any strategy from `package.module:Class` and its
parameters (`strategy.loading`). Pure functions of market data and parameters: no I/O."""

from strategy.base import ParamError, Strategy, StrategyParams
from strategy.loading import DEFAULT_SPEC, describe, load

__all__ = ["DEFAULT_SPEC", "ParamError", "Strategy", "StrategyParams", "describe", "load"]
