"""Evaluating Earth Engine expression graphs (the DAG the client serializes).

``values`` is a flat map ``id -> node``; ``result`` names the root. Node kinds: constantValue,
integerValue, arrayValue, dictionaryValue, valueReference, functionInvocationValue,
functionDefinitionValue + argumentReference. Algorithms come from a table filled by
``@algo('Name')`` (see ``algorithms.py``), with the REST argument names as keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from aether.testing.emulator.values import EEError

ALGORITHMS: dict[str, Callable[..., Any]] = {}


def algo(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a Python function as the implementation of EE algorithms ``names``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for n in names:
            ALGORITHMS[n] = fn
        return fn

    return deco


@dataclass
class Lambda:
    """A ``functionDefinitionValue``: called with positional values for its argument names."""

    names: list[str]
    body: str
    graph: Graph
    env: dict[str, Any]

    def __call__(self, *args: Any) -> Any:
        env = {**self.env, **dict(zip(self.names, args, strict=False))}
        return Graph(self.graph.values, self.graph.context, env, self.graph).value(self.body)


class Graph:
    """One evaluation of an expression; ``context`` carries the catalog to algorithms.

    A lambda's body runs in a child graph. Values the enclosing graphs already computed are
    reused: they cannot depend on the lambda's arguments (the client names every argument
    uniquely), so an image used inside ``map`` is built once, not once per element.
    """

    def __init__(self, values: dict[str, Any], context: Any, env: dict[str, Any] | None = None,
                 parent: Graph | None = None) -> None:
        self.values, self.context, self.env = values, context, env or {}
        self.parent = parent
        self._memo: dict[str, Any] = {}

    def value(self, ref: str) -> Any:
        g: Graph | None = self
        while g is not None:
            if ref in g._memo:
                return g._memo[ref]
            g = g.parent
        if ref not in self.values:
            raise EEError(f"Invalid expression: unknown value reference '{ref}'.")
        self._memo[ref] = self.node(self.values[ref])
        return self._memo[ref]

    def node(self, n: dict[str, Any]) -> Any:
        if "constantValue" in n:
            return n["constantValue"]
        if "integerValue" in n:
            return int(n["integerValue"])
        if "valueReference" in n:
            return self.value(n["valueReference"])
        if "argumentReference" in n:
            try:
                return self.env[n["argumentReference"]]
            except KeyError:
                raise EEError(f"Unbound argument '{n['argumentReference']}'.") from None
        if "arrayValue" in n:
            return [self.node(v) for v in n["arrayValue"].get("values", [])]
        if "dictionaryValue" in n:
            return {k: self.node(v) for k, v in n["dictionaryValue"].get("values", {}).items()}
        if "functionDefinitionValue" in n:
            d = n["functionDefinitionValue"]
            return Lambda(list(d.get("argumentNames", [])), d["body"], self, self.env)
        if "functionInvocationValue" in n:
            return self.invoke(n["functionInvocationValue"])
        if "bytesValue" in n:
            raise EEError("Emulator: bytesValue is not supported")
        raise EEError(f"Invalid expression node: {sorted(n)}")

    def invoke(self, inv: dict[str, Any]) -> Any:
        args = {k: self.node(v) for k, v in inv.get("arguments", {}).items()}
        if "functionReference" in inv:
            fn = self.value(inv["functionReference"])
            if not isinstance(fn, Lambda):
                raise EEError("functionReference does not name a function.")
            return fn(*[args.get(name) for name in fn.names])
        name = inv.get("functionName", "")
        impl = ALGORITHMS.get(name)
        if impl is None:
            raise EEError(f"Emulator: unsupported algorithm '{name}'")
        try:  # argument names are checked apart, so a TypeError inside stays a bug
            _signature(impl).bind(self.context, **args)
        except TypeError as e:
            raise EEError(f"{name}: {e}") from None
        return impl(self.context, **args)


@cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def evaluate(expression: dict[str, Any], context: Any) -> Any:
    """Evaluate a serialized expression ``{"result": id, "values": {...}}``."""
    if not isinstance(expression, dict) or "values" not in expression:
        raise EEError("Invalid JSON payload: 'expression' must have 'result' and 'values'.")
    return Graph(expression["values"], context).value(str(expression.get("result", "0")))
