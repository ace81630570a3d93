"""The one protocol every AlphaEarth source implements.

A source turns POIs (points, EPSG:4326) into buffer means per radius, and a place into grid
cell means (``aether.grids``). Sources are found by module name (``aether.sources.<name>``),
each exposing a ``create(**options) -> EmbeddingSource`` factory, so adding a source is one
new module and no edit anywhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from aether.errors import InputError

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    from aether import zonal
    from aether.places import Place


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

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Rows of the ``grid_embeddings`` table: area-weighted means over the cells of
        ``cell`` (``100m``, ``0.5km``, ``h3:9``; see ``aether.grids``) covering ``place``."""
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


def point_means_table(
    pois: gpd.GeoDataFrame, radii: Sequence[float], year: int,
    results: Iterable[tuple[np.ndarray, list[zonal.Partial]]],
) -> pd.DataFrame:
    """poi_embeddings rows from per-block sums ``(POI indices, [Partial per radius])``.

    What sources with pixels (COG tiles, xee chunks) share: a POI's sums from every block
    its buffers touch add up before the means, so buffers across blocks are exact.
    """
    import pandas as pd

    from aether import aef, zonal
    from aether.tables import poi_embeddings_frame

    totals = [zonal.Partial.zeros(len(pois), aef.N_BANDS) for _ in radii]
    for idx, parts in results:
        for total, part in zip(totals, parts, strict=True):
            total.weighted_sum[idx] += part.weighted_sum
            total.valid_weight[idx] += part.valid_weight
    ids = pois["poi_id"].astype(str).tolist()
    frames = []
    for r, total in zip(radii, totals, strict=True):
        m = zonal.finalize(total, r, aef.PIXEL_SIZE_M**2)
        frames.append(poi_embeddings_frame(ids, year, float(r), m.mean, m.weight,
                                           m.valid_fraction, m.norm))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
