"""aether: human-centred place embeddings from AlphaEarth and Points of Interest.

The Python API (``aether.pois``, ``aether.embed``, ``aether.extract``, ``aether.train``,
``aether.Model``, ``aether.query``...) lives in ``aether.api``; it is imported on first use,
so ``import aether`` and ``aether --help`` stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aether._version import VERSION as __version__  # noqa: F401 (the package attribute)

#: The names of ``aether.api`` offered as ``aether.<name>``; ``aether.pois`` and ``aether.query``
#: are the subpackages of those names, made callable as the API functions (``_callable``).
__all__ = ["Model", "Search", "build_sample", "demo", "embed", "encode", "evaluate", "extract",
           "grid", "pois", "query", "run", "runs", "search", "serve", "similar", "train"]

if TYPE_CHECKING:
    from aether.api import (
        Model,
        Search,
        build_sample,
        demo,
        embed,
        encode,
        evaluate,
        extract,
        grid,
        run,
        runs,
        search,
        serve,
        similar,
        train,
    )


def __getattr__(name: str) -> Any:
    """Resolve the API names on first use (PEP 562), keeping ``import aether`` light."""
    import importlib

    if name in ("pois", "query"):
        return importlib.import_module(f"aether.{name}")
    if name in __all__:
        return getattr(importlib.import_module("aether.api"), name)
    raise AttributeError(f"module 'aether' has no attribute {name!r}")
