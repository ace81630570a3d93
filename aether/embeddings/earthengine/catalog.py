"""What the AlphaEarth collection on Earth Engine holds: its newest year, the images (ids and
``system:version``) a place and year are made from — the dataset version a table records —
and the grid a zone's pixels lie on (checked, not assumed).

Expressions only; the caller evaluates them through its own session and retry policy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aether.core import aef

log = logging.getLogger(__name__)


def newest_start() -> Any:
    """The newest image's ``system:time_start`` (ms), over the whole collection."""
    import ee

    return ee.ImageCollection(aef.COLLECTION_ID).aggregate_max("system:time_start")


def year_of(ms: Any) -> int | None:
    """The UTC year of a ``system:time_start`` (None: the collection is empty)."""
    return None if ms is None else time.gmtime(int(ms) / 1000).tm_year


def images_over(year: int, bbox: tuple[float, float, float, float]) -> Any:
    """``[[system:index...], [system:version...]]`` of the year's images over a lon/lat bbox."""
    import ee

    start, end = aef.year_range_ms(year)
    ic = ee.ImageCollection(aef.COLLECTION_ID).filterDate(start, end).filterBounds(
        ee.Geometry.Rectangle(list(bbox)))
    return ic.reduceColumns(ee.Reducer.toList().repeat(2),
                            ["system:index", "system:version"]).get("list")


def version_record(value: Any) -> dict[str, Any]:
    """The dataset version of a table: the collection and each image as ``id@version``."""
    ids, versions = (value or [[], []])[:2]
    return {"collection": aef.COLLECTION_ID,
            "images": sorted(f"{i}@{v}" for i, v in zip(ids, versions, strict=False))}


def projection_at(year: int, lon: float, lat: float) -> Any:
    """The projection of the year's image under a point (its first band): the grid a zone's
    pixels really lie on. ``mosaic()`` would answer EE's default, EPSG:4326 at 1°."""
    import ee

    start, end = aef.year_range_ms(year)
    ic = ee.ImageCollection(aef.COLLECTION_ID).filterDate(start, end).filterBounds(
        ee.Geometry.Point([lon, lat]))
    return ic.first().select(aef.BANDS[0]).projection()


def reduction_grid(info: Any, crs: str) -> list[float] | None:
    """The ``crsTransform`` to reduce a zone on, from its image's projection: None when the
    image's grid is the one ``crs`` + ``scale=10`` gives (10 m pixels with edges on
    multiples of 10 m, which aether assumed untested until 2026-12), else the image's own
    grid, north-up, so each pixel is reduced whole rather than resampled half a pixel off.
    An image in another crs is reduced in ``crs`` at 10 m, as before, with a warning."""
    info = info or {}
    if info.get("crs") != crs or len(info.get("transform") or []) != 6:
        log.warning("the %s image under this zone is in %s, not %s: its pixels are "
                    "resampled onto %s's 10 m grid", aef.COLLECTION_ID, info.get("crs"),
                    crs, crs)
        return None
    a, b, c, d, e, f = (float(v) for v in info["transform"])
    px = aef.PIXEL_SIZE_M
    if abs(a) == px and abs(e) == px and b == d == 0 and c % px == 0 and f % px == 0:
        return None
    log.warning("the %s images in %s lie on their own grid (%s), not on whole multiples "
                "of 10 m: reducing on it (crsTransform)", aef.COLLECTION_ID, crs,
                [a, b, c, d, e, f])
    return [abs(a), 0.0, c, 0.0, -abs(e), f]
