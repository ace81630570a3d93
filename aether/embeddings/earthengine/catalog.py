"""What the AlphaEarth collection on Earth Engine holds: its newest year, and the images (ids
and ``system:version``) a place and year are made from — the dataset version a table records.

Expressions only; the caller evaluates them through its own session and retry policy.
"""

from __future__ import annotations

import time
from typing import Any

from aether.core import aef


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
