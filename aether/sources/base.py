"""The one protocol every AlphaEarth source implements.

A source turns POIs (points, EPSG:4326) into buffer means per radius, and a place into grid
cell means. Sources are found by module name (``aether.sources.<name>``), each exposing a
``create(**options) -> EmbeddingSource`` factory, so adding a source is one new module and no
edit anywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aether.errors import InputError

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd


@runtime_checkable
class EmbeddingSource(Protocol):
    """What extract, grid and the scheduled runs need from any source."""

    name: str

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the ``poi_embeddings`` contract: one per poi × radius, in any order.

        ``pois`` has ``poi_id`` and point geometry in EPSG:4326. POIs outside coverage keep
        their rows with NaN vectors and ``valid_fraction`` 0.
        """
        ...


#: Short names whose module is named otherwise (``ee`` would shadow the ``ee`` package).
ALIASES = {"ee": "earthengine"}


def get_source(name: str, **options: Any) -> EmbeddingSource:
    """Instantiate the source named ``name`` from ``aether.sources.<name>``."""
    if not name.isidentifier() or name == "base":
        raise InputError(f"unknown source {name!r}", "use one of: cog, ee, xee")
    module_name = ALIASES.get(name, name)
    try:
        module = importlib.import_module(f"aether.sources.{module_name}")
    except ModuleNotFoundError as e:
        if e.name == f"aether.sources.{module_name}":
            raise InputError(f"unknown source {name!r}", "use one of: cog, ee, xee") from None
        raise
    return module.create(**options)
