"""The emulator's value model: what an expression graph evaluates to, and its getInfo JSON.

Geometries are shapely in lon/lat (EPSG:4326): a buffer is the polygon Earth Engine builds
(``geometry.py``), never an exact circle. Images are lazy: ``read(grid)`` composes readers
and nothing is decoded until a reduction or a pixel request asks for a grid; each band has
an EE pixel type (``types``), which sets what ``computePixels`` answers and counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Metres per degree on the equator: EE's conversion of ``scale`` for geographic crs.
METERS_PER_DEGREE = 111319.49079327357


class EEError(Exception):
    """An error Earth Engine would report to the client (HTTP 400 INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Grid:
    """A pixel grid: crs, affine (a, b, c, d, e, f) and size. Row 0 is the top row."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def affine(self) -> Any:
        from affine import Affine

        return Affine(*self.transform)

    def bounds(self) -> tuple[float, float, float, float]:
        a, _, c, _, e, f = self.transform
        xs, ys = (c, c + a * self.width), (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Projection:
    """``ee.Projection``: a crs and a transform whose ``a`` is the scale."""

    crs: str
    transform: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, -1, 0)

    @property
    def scale(self) -> float:
        return abs(self.transform[0])


DEFAULT_PROJECTION = Projection("EPSG:4326", (1.0, 0, 0, 0, -1.0, 0))


def is_geographic(crs: str) -> bool:
    return crs.upper() in ("EPSG:4326", "WGS84", "CRS:84")


@dataclass
class Geom:
    """A geometry in lon/lat."""

    shape: Any


@dataclass(frozen=True)
class ErrorMargin:
    """``ee.ErrorMargin``: a value and its unit ('meters', 'projected' or 'infinite')."""

    value: float
    unit: str = "meters"


#: EE pixel types the emulator models, as numpy dtypes.
PIXEL_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4",
               "uint32": "u4", "int64": "i8", "float": "f4", "double": "f8"}


@dataclass
class Feat:
    """``ee.Feature``: geometry (or None), properties, id (``system:index``)."""

    geom: Geom | None
    props: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def get(self, name: str) -> Any:
        return self.props.get(name)


@dataclass
class Img:
    """``ee.Image``: band names, a lazy ``read(grid) -> (H, W, B) float32`` (NaN = masked)."""

    bands: list[str]
    read: Callable[[Grid], np.ndarray]
    props: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    footprint: Any = None  # shapely lon/lat, None = unbounded
    native: Grid | None = None  # None: EE's default projection (EPSG:4326, 1 degree)
    types: tuple[str, ...] | None = None  # a PIXEL_TYPES key per band; None: all "float"

    def band_types(self) -> list[str]:
        return list(self.types) if self.types else ["float"] * len(self.bands)

    def get(self, name: str) -> Any:
        return self.props.get(name)

    @property
    def projection(self) -> Projection:
        return Projection(self.native.crs, self.native.transform) if self.native else (
            DEFAULT_PROJECTION)


@dataclass
class Coll:
    """A FeatureCollection or ImageCollection: elements in order plus collection properties."""

    items: list[Any]
    kind: str = "FeatureCollection"
    props: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Date:
    millis: int


@dataclass(frozen=True)
class DateRange:
    start: int
    end: int


@dataclass(frozen=True)
class Filter:
    pred: Callable[[Any], bool]


@dataclass(frozen=True)
class Reducer:
    """A reducer: ``kind`` in mean/sum/toList/combine/repeat; outputs are its names."""

    kind: str
    outputs: tuple[str, ...]
    parts: tuple[Reducer, ...] = ()
    weighted: bool = True  # False after ``Reducer.unweighted``


# --- getInfo JSON ---------------------------------------------------------------------

def geometry_json(g: Geom | None) -> dict[str, Any] | None:
    if g is None:
        return None
    shape = g.shape
    if shape.geom_type == "Polygon":  # the common case (buffers), without the generic walk
        rings = [shape.exterior, *shape.interiors]
        return {"type": "Polygon", "coordinates": [np.asarray(r.coords).tolist() for r in rings]}
    if shape.geom_type == "Point":
        return {"type": "Point", "coordinates": [shape.x, shape.y]}
    from shapely.geometry import mapping

    return _lists(mapping(shape))


def _lists(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    return v


def _column_type(v: Any) -> str:
    if isinstance(v, bool):
        return "Boolean"
    if isinstance(v, int):
        return "Integer"
    if isinstance(v, float):
        return "Float"
    if isinstance(v, str):
        return "String"
    return "Object"


def feature_json(f: Feat) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Feature", "geometry": geometry_json(f.geom)}
    if f.id is not None:
        out["id"] = f.id
    out["properties"] = {k: v if type(v) in _PLAIN and v == v else to_json(v)
                         for k, v in f.props.items()}
    return out


_PLAIN = (str, int, float, bool, type(None))  # v == v: NaN goes through to_json


def _pixel_type(t: str) -> dict[str, Any]:
    if t in ("float", "double"):
        return {"type": "PixelType", "precision": t}
    info = np.iinfo(np.dtype(PIXEL_TYPES[t]))
    return {"type": "PixelType", "precision": "int", "min": int(info.min), "max": int(info.max)}


def image_json(img: Img) -> dict[str, Any]:
    band: dict[str, Any] = {}
    proj = img.projection
    band.update(crs=proj.crs, crs_transform=list(proj.transform))
    if img.native:
        band["dimensions"] = [img.native.width, img.native.height]
    out: dict[str, Any] = {"type": "Image", "bands": [
        {"id": b, "data_type": _pixel_type(t), **band}
        for b, t in zip(img.bands, img.band_types(), strict=True)]}
    if img.id:
        out["id"] = img.id
        out["version"] = 1
    out["properties"] = {k: to_json(v) for k, v in img.props.items()}
    return out


def collection_json(c: Coll) -> dict[str, Any]:
    if c.kind == "ImageCollection":
        out: dict[str, Any] = {"type": "ImageCollection", "bands": []}
        feats = [image_json(i) for i in c.items]
    else:
        cols: dict[str, str] = {}
        for f in c.items:
            for k, v in f.props.items():
                cols.setdefault(k, _column_type(v))
        out = {"type": "FeatureCollection", "columns": cols}
        feats = [feature_json(f) for f in c.items]
    if c.id:
        out["id"] = c.id
        out["version"] = 1
    if c.props:
        out["properties"] = {k: to_json(v) for k, v in c.props.items()}
    out["features"] = feats
    return out


def to_json(v: Any) -> Any:
    """The JSON ``getInfo`` returns for a value."""
    if isinstance(v, Coll):
        return collection_json(v)
    if isinstance(v, Feat):
        return feature_json(v)
    if isinstance(v, Img):
        return image_json(v)
    if isinstance(v, Geom):
        return geometry_json(v)
    if isinstance(v, Date):
        return {"type": "Date", "value": v.millis}
    if isinstance(v, DateRange):
        return {"type": "DateRange", "dates": [v.start, v.end]}
    if isinstance(v, Projection):
        return {"type": "Projection", "crs": v.crs, "transform": list(v.transform)}
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (Filter, Reducer, ErrorMargin)) or callable(v):
        raise EEError(f"Emulator: cannot serialize a {type(v).__name__}")
    return v
