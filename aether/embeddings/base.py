"""The one protocol every AlphaEarth source implements.

A source turns POIs (points, EPSG:4326) into buffer means per radius, and a place into grid
cell means (``aether.core.cells``). Sources are registered in ``SOURCES``, each module
exposing a ``create(**options) -> EmbeddingSource`` factory.
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

    from aether.core import zonal
    from aether.places.place import Place


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
        ``cell`` (``100m``, ``0.5km``, ``h3:9``; see ``aether.core.cells``) covering ``place``."""
        ...


#: The registered sources: name -> module exposing ``create(**options)`` (imported lazily,
#: so ``ee`` and ``xee`` cost nothing unless used). Adding a source is a module and a line here.
SOURCES: dict[str, str] = {
    "cog": "aether.embeddings.cog",
    "ee": "aether.embeddings.earthengine.source",
    "xee": "aether.embeddings.xee",
}


def get_source(name: str, **options: Any) -> EmbeddingSource:
    """Instantiate the registered source ``name`` with its options."""
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r}", f"use one of: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name]).create(**options)


def point_means_table(
    pois: gpd.GeoDataFrame, radii: Sequence[float], year: int,
    results: Iterable[tuple[np.ndarray, list[zonal.Partial]]],
) -> pd.DataFrame:
    """poi_embeddings rows from per-block sums ``(POI indices, [Partial per radius])``.

    What sources with pixels (COG tiles, xee chunks) share: a POI's sums from every block
    its buffers touch add up before the means, so buffers across blocks are exact. Results
    are folded as they arrive into one float32 array (POI × radius rows) that becomes the
    means and then the table's band columns: memory is the output's size, once.
    """
    import numpy as np

    from aether.core import aef, windows, zonal
    from aether.io.tables import poi_embeddings_frame

    n, n_radii = len(pois), len(radii)
    sums = np.zeros((n * n_radii, aef.N_BANDS), dtype=np.float32)
    valid = np.zeros(n * n_radii)
    for idx, parts in results:
        for k, part in enumerate(parts):
            sums[k * n + idx] += part.weighted_sum
            valid[k * n + idx] += part.valid_weight
    area = np.repeat([windows.area_px(float(r), aef.PIXEL_SIZE_M**2) for r in radii], n)
    m = zonal.finalize_area(zonal.Partial(sums, valid, aef.N_BANDS), area, in_place=True)
    ids = pois["poi_id"].astype(str).tolist() * n_radii
    radius = np.repeat(np.asarray(radii, dtype=np.float32), n)
    return poi_embeddings_frame(ids, year, radius, m.mean, m.weight, m.valid_fraction, m.norm)
