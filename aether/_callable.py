"""``aether.pois`` and ``aether.query`` are subpackages *and* functions of the Python API.

Importing a submodule sets the package attribute to the module, so a function of the same
name in ``aether/__init__`` would be replaced as soon as ``aether.pois.load`` is imported.
Instead the two subpackages are made callable: calling one calls the API function of its
name (``aether.api`` is looked up at call time, the one reference upwards, like the lazy
re-export in ``aether/__init__``), while ``aether.pois.load`` and friends stay modules.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CallablePackage(types.ModuleType):
    """A package whose call is ``aether.api.<its last name>``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("aether.api")
        return getattr(api, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def make_callable(name: str) -> None:
    """Turn the already-imported package ``name`` into a ``CallablePackage``."""
    sys.modules[name].__class__ = CallablePackage
