"""``overture``: Overture Maps Places, read as GeoParquet straight from a release's object store.

Overture publishes each monthly release as Hive-partitioned GeoParquet
(``<root>/<release>/theme=places/type=place/*.parquet``) on public, anonymous S3. pyarrow
datasets read only the row groups whose ``bbox`` statistics meet the place's box, so a city
costs megabytes, not the 60 M-place theme. Categories map through aether's own taxonomy: the
most specific entry of the place's category hierarchy (or ``categories.primary`` in older
releases) that the taxonomy knows as an OSM value decides ``category`` / ``top_category``.
``confidence`` is kept as a column and can be filtered on. No Overpass is involved, so
scheduled runs can avoid it entirely.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aether.errors import PoiError
from aether.pois.readers.base import raw_frame, with_snapshot

if TYPE_CHECKING:
    from aether.places.place import Place

log = logging.getLogger(__name__)

#: The newest release this version was checked against; ``overture:RELEASE`` or
#: ``AETHER_OVERTURE_RELEASE`` picks another.
DEFAULT_RELEASE = "2025-10-22.0"
DEFAULT_ROOT = "s3://overturemaps-us-west-2/release"
REGION = "us-west-2"
PAD = 1e-4  # degrees
COLUMNS = ("id", "geometry", "names", "categories", "taxonomy", "confidence", "bbox")


def dataset_path(release: str, root: str | None = None) -> str:
    """Where a release's places live: ``<root>/<release>/theme=places/type=place``."""
    from aether.settings import current

    root = (root or current().overture_root or DEFAULT_ROOT).rstrip("/")
    return f"{root}/{release}/theme=places/type=place"


def _filesystem(path: str) -> tuple[Any, str]:
    """pyarrow filesystem and in-filesystem path: anonymous S3 (``AETHER_OVERTURE_ENDPOINT``
    points it at another S3 service), or the local disk."""
    import pyarrow.fs as pafs

    parts = urlsplit(path)
    if parts.scheme == "s3":
        from aether.settings import current

        endpoint = current().overture_endpoint
        kw: dict[str, Any] = {"anonymous": True, "region": REGION}
        if endpoint:
            ep = urlsplit(endpoint)
            kw.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
        return pafs.S3FileSystem(**kw), f"{parts.netloc}{parts.path}"
    if parts.scheme in ("", "file"):
        return pafs.LocalFileSystem(), parts.path if parts.scheme else path
    raise PoiError(f"cannot read Overture places from {path}",
                   "use an s3:// release root (AETHER_OVERTURE_ROOT) or a local folder")


def read(place: Place | None, *, release: str | None = None, root: str | None = None,
         min_confidence: float = 0.0) -> Any:
    """Raw POI frame of the Overture places inside ``place``'s bounding box."""
    import pyarrow.dataset as pads

    if place is None:
        raise PoiError("the overture POI source needs a place", "pass --city, --bbox or --boundary")
    if not 0.0 <= min_confidence <= 1.0:
        raise PoiError(f"min confidence {min_confidence} is not in [0, 1]",
                       "Overture's confidence is a probability, e.g. 0.5")
    from aether.settings import current

    release = release or current().overture_release or DEFAULT_RELEASE
    path = dataset_path(release, root)
    fs, where = _filesystem(path)
    # bbox columns are float32: pad by more than their rounding, the clip to the place follows
    west, south, east, north = (v + d for v, d in zip(place.boundary.bounds,
                                                      (-PAD, -PAD, PAD, PAD), strict=True))
    try:
        ds = pads.dataset(where, filesystem=fs, format="parquet", partitioning="hive")
        names = set(ds.schema.names)
        cols = [c for c in COLUMNS if c in names]
        box = ((pads.field("bbox", "xmin") <= east) & (pads.field("bbox", "xmax") >= west)
               & (pads.field("bbox", "ymin") <= north) & (pads.field("bbox", "ymax") >= south))
        if min_confidence > 0 and "confidence" in names:
            box = box & (pads.field("confidence") >= min_confidence)
        table = ds.to_table(columns=cols, filter=box)
    except (OSError, ValueError) as e:  # pyarrow's errors subclass these
        raise PoiError(f"cannot read Overture places at {path}: {str(e).splitlines()[0]}",
                       "check the release name (overture:YYYY-MM-DD.N) and the network") from e
    log.info("read %d Overture places of release %s", table.num_rows, release)
    return with_snapshot(_frame(table.to_pylist()), release.split(".")[0],
                         f"the Overture release {release}")


def _frame(records: list[dict[str, Any]]) -> Any:
    from aether.pois.taxonomy import OTHER_TOP, classify_values, humanise

    rows = []
    for r in records:
        hierarchy = _hierarchy(r)
        if not hierarchy:
            continue
        hit = classify_values(hierarchy[::-1])
        if hit is None:
            hit = humanise(hierarchy[-1]), humanise(hierarchy[0]) if len(hierarchy) > 1 else (
                OTHER_TOP)
        name = (r.get("names") or {}).get("primary")
        rows.append({"poi_id": f"overture:{r['id']}", "name": name, "category": hit[0],
                     "top_category": hit[1], "geometry": _geometry(r),
                     "confidence": r.get("confidence")})
    return raw_frame(rows, extra=("confidence",))


def _geometry(record: dict[str, Any]) -> Any:
    """A place's WKB geometry, decoded; a value that is not WKB is the release's fault and
    is refused, naming the place, rather than raised from GEOS."""
    import shapely

    wkb = record.get("geometry")
    if wkb is None:
        return None
    try:
        if not isinstance(wkb, bytes | bytearray | memoryview):
            raise TypeError(type(wkb).__name__)
        return shapely.from_wkb(bytes(wkb))
    except (shapely.errors.GEOSException, TypeError, ValueError) as e:
        detail = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise PoiError(f"Overture place {str(record.get('id'))[:40]!r} has a geometry that is "
                       f"not WKB ({detail})",
                       "the release files are damaged: fetch them again, or use another "
                       "release (overture:YYYY-MM-DD.N)") from None


def _hierarchy(record: dict[str, Any]) -> list[str]:
    """General → specific categories: ``taxonomy.hierarchy`` (2025 releases on), else
    ``categories.primary`` (older releases)."""
    tax = record.get("taxonomy") or {}
    if tax.get("hierarchy"):
        return [str(c) for c in tax["hierarchy"]]
    primary = (record.get("categories") or {}).get("primary")
    return [str(primary)] if primary else []
