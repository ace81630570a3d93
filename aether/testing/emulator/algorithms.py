"""The Earth Engine algorithms the emulator implements, one small function each.

Argument names are the REST names the client sends (see ``ee/tests/algorithms.json``);
``ctx`` is the emulator (its ``catalog`` and in-memory ``assets``). Covered: what the POI
``reduceRegions`` pipeline, xee 0.1.2 and common variants emit.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from typing import Any

import numpy as np

from aether.testing.emulator.geometry import buffer, reproject
from aether.testing.emulator.graph import algo
from aether.testing.emulator.reduce import reduce_regions
from aether.testing.emulator.values import (
    PIXEL_TYPES,
    Coll,
    Date,
    DateRange,
    EEError,
    ErrorMargin,
    Feat,
    Filter,
    Geom,
    Grid,
    Img,
    Projection,
    Reducer,
)

# --- dates and filters ---------------------------------------------------------------------


def _millis(v: Any) -> int:
    if isinstance(v, Date):
        return v.millis
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise EEError(f"Date: Invalid date string: {v}") from None
        return int((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp() * 1000)
    raise EEError(f"Date: cannot interpret {v!r} as a date")


@algo("Date")
def date(ctx: Any, value: Any, timeZone: str | None = None) -> Date:
    return Date(_millis(value))


@algo("DateRange")
def date_range(ctx: Any, start: Any, end: Any = None, timeZone: str | None = None) -> DateRange:
    s = _millis(start)
    return DateRange(s, _millis(end) if end is not None else s + 1)


def _prop(element: Any, name: str) -> Any:
    if name == ".all":
        return element
    return element.props.get(name)


def _geometry_of(v: Any) -> Any:
    if isinstance(v, Geom):
        return v.shape
    if isinstance(v, Feat):
        return v.geom.shape if v.geom else None
    if isinstance(v, Img):
        return v.footprint
    if isinstance(v, Coll):
        return collection_geometry(None, v).shape
    return None


@algo("Filter.dateRangeContains")
def filter_date_range(ctx: Any, leftValue: Any = None, rightField: str | None = None,
                      leftField: str | None = None, rightValue: Any = None) -> Filter:
    rng = leftValue if isinstance(leftValue, DateRange) else date_range(ctx, leftValue)

    def pred(e: Any) -> bool:
        t = e.props.get(rightField)
        return t is not None and rng.start <= _millis(t) < rng.end

    return Filter(pred)


@algo("Filter.intersects")
def filter_intersects(ctx: Any, leftField: str = ".all", rightValue: Any = None,
                      rightField: str | None = None, leftValue: Any = None,
                      maxError: Any = None) -> Filter:
    other = _geometry_of(rightValue)

    def pred(e: Any) -> bool:
        g = _geometry_of(_prop(e, leftField))
        return g is None or other is None or bool(g.intersects(other))

    return Filter(pred)


@algo("Filter.equals")
def filter_equals(ctx: Any, leftField: str | None = None, rightValue: Any = None,
                  rightField: str | None = None, leftValue: Any = None) -> Filter:
    return Filter(lambda e: _prop(e, leftField) == rightValue)  # type: ignore[arg-type]


@algo("Filter.listContains")
def filter_list_contains(ctx: Any, leftField: str | None = None, rightValue: Any = None,
                         rightField: str | None = None, leftValue: Any = None) -> Filter:
    """``ee.Filter.inList(field, values)`` arrives as listContains(leftValue=values,
    rightField=field)."""

    def side(e: Any, field: str | None, value: Any) -> Any:
        return _prop(e, field) if field is not None else value

    return Filter(lambda e: side(e, rightField, rightValue) in (side(e, leftField, leftValue)
                                                                 or []))


@algo("Filter.and")
def filter_and(ctx: Any, filters: list[Filter]) -> Filter:
    return Filter(lambda e: all(f.pred(e) for f in filters))


@algo("Filter.or")
def filter_or(ctx: Any, filters: list[Filter]) -> Filter:
    return Filter(lambda e: any(f.pred(e) for f in filters))


@algo("Filter.calendarRange")
def filter_calendar_range(ctx: Any, start: int, end: int | None = None, field: str = "year"
                          ) -> Filter:
    end = start if end is None else end

    def pred(e: Any) -> bool:
        t = e.props.get("system:time_start")
        if t is None:
            return False
        when = dt.datetime.fromtimestamp(_millis(t) / 1000, dt.UTC)
        v = {"year": when.year, "month": when.month, "day_of_year": when.timetuple().tm_yday}
        return start <= v[field] <= end

    return Filter(pred)


# --- geometries ------------------------------------------------------------------------------


def _lonlat(shape: Any, crs: str | None) -> Any:
    return shape if not crs else reproject(shape, str(crs), "EPSG:4326")


def _crs_name(crs: Any) -> str | None:
    return crs.crs if isinstance(crs, Projection) else crs


@algo("GeometryConstructors.Point")
def point(ctx: Any, coordinates: list[float], crs: Any = None, geodesic: Any = None) -> Geom:
    from shapely.geometry import Point

    return Geom(_lonlat(Point(coordinates[:2]), _crs_name(crs)))


@algo("GeometryConstructors.Polygon")
def polygon(ctx: Any, coordinates: list, crs: Any = None, geodesic: Any = None,
            maxError: Any = None, evenOdd: Any = None) -> Geom:
    from shapely.geometry import Polygon

    rings = coordinates if coordinates and isinstance(coordinates[0][0], list) else [coordinates]
    return Geom(_lonlat(Polygon(rings[0], rings[1:]), _crs_name(crs)))


@algo("GeometryConstructors.MultiPoint")
def multipoint(ctx: Any, coordinates: list, crs: Any = None, geodesic: Any = None) -> Geom:
    from shapely.geometry import MultiPoint

    return Geom(_lonlat(MultiPoint(coordinates), _crs_name(crs)))


@algo("GeometryConstructors.Rectangle")
def rectangle(ctx: Any, coordinates: list, crs: Any = None, geodesic: Any = None,
              evenOdd: Any = None) -> Geom:
    from shapely.geometry import box

    flat = np.asarray(coordinates, dtype=float).ravel()
    return Geom(_lonlat(box(*flat[:4]), _crs_name(crs)))


@algo("Geometry.buffer")
def geometry_buffer(ctx: Any, geometry: Geom, distance: float, maxError: Any = None,
                    proj: Any = None) -> Geom:
    return buffer(geometry, float(distance), maxError, proj)


@algo("Feature.buffer")
def feature_buffer(ctx: Any, feature: Feat, distance: float, maxError: Any = None,
                   proj: Any = None) -> Feat:
    if feature.geom is None:
        raise EEError("Feature.buffer: Feature has no geometry.")
    return Feat(buffer(feature.geom, float(distance), maxError, proj), dict(feature.props),
                feature.id)


@algo("Geometry.bounds")
def geometry_bounds(ctx: Any, geometry: Geom, maxError: Any = None, proj: Any = None,
                    geodesics: Any = None) -> Geom:
    from shapely.geometry import box

    return Geom(box(*geometry.shape.bounds))


@algo("Geometry.centroid")
def geometry_centroid(ctx: Any, geometry: Geom, maxError: Any = None, proj: Any = None) -> Geom:
    return Geom(geometry.shape.centroid)


@algo("Feature.geometry", "Element.geometry")
def feature_geometry(ctx: Any, feature: Feat, maxError: Any = None, proj: Any = None,
                     geodesics: Any = None) -> Geom | None:
    return feature.geom


@algo("Collection.geometry")
def collection_geometry(ctx: Any, collection: Coll, maxError: Any = None) -> Geom:
    from shapely import GeometryCollection, MultiPolygon

    shapes = [s for s in (_geometry_of(e) for e in collection.items) if s is not None]
    if shapes and all(s.geom_type == "Polygon" for s in shapes):
        return Geom(MultiPolygon(shapes))
    return Geom(GeometryCollection(shapes))


@algo("ErrorMargin")
def error_margin(ctx: Any, value: float | None = None, unit: str = "meters") -> ErrorMargin:
    if unit not in ("meters", "projected", "infinite"):
        raise EEError(f"ErrorMargin: unknown unit '{unit}'.")
    return ErrorMargin(float(value or 0.0), unit)


@algo("Projection")
def projection(ctx: Any, crs: str, transform: list[float] | None = None,
               transformWkt: Any = None) -> Projection:
    t = tuple(transform) if transform else (1.0, 0, 0, 0, -1.0, 0)
    return Projection(str(crs), t)  # type: ignore[arg-type]


# --- features, collections, elements ----------------------------------------------------


@algo("Feature")
def feature(ctx: Any, geometry: Any = None, metadata: dict | None = None) -> Feat:
    if isinstance(geometry, Feat):
        return Feat(geometry.geom, {**geometry.props, **(metadata or {})}, geometry.id)
    if isinstance(geometry, dict):  # GeoJSON passed as a constant
        from shapely.geometry import shape

        geometry = Geom(shape(geometry))
    return Feat(geometry, dict(metadata or {}))


def _with_ids(items: list[Any]) -> list[Any]:
    for i, f in enumerate(items):
        if isinstance(f, Feat) and f.id is None:
            f.id = str(i)
    return items


@algo("Collection")
def collection(ctx: Any, features: list[Any]) -> Coll:
    """Features (a geometry stands for a feature of it); collections are kept as elements
    (a collection of collections, for ``Collection.flatten``)."""
    items = [f if isinstance(f, Feat | Coll) else Feat(f) for f in features]
    return Coll(_with_ids([f if isinstance(f, Coll) else Feat(f.geom, dict(f.props), f.id)
                           for f in items]))


@algo("Collection.flatten")
def collection_flatten(ctx: Any, collection: Coll) -> Coll:
    """"Flattens collections of collections": the inner collections' elements, in order, each
    with the id ``outer_inner`` as Earth Engine names them."""
    c = _collection(collection, "Collection.flatten")
    out: list[Any] = []
    for k, inner in enumerate(c.items):
        inner = _collection(inner, "Collection.flatten")
        outer_id = inner.id if inner.id is not None else str(k)
        for j, e in enumerate(inner.items):
            e_id = e.id if getattr(e, "id", None) is not None else str(j)
            out.append(_copy_with_id(e, f"{outer_id}_{e_id}"))
    return Coll(out, c.kind, dict(c.props))


def _copy_with_id(e: Any, new_id: str) -> Any:
    if isinstance(e, Feat):
        return Feat(e.geom, dict(e.props), new_id)
    return e


@algo("Collection.loadTable")
def load_table(ctx: Any, tableId: str, geometryColumn: Any = None, version: Any = None) -> Coll:
    table = ctx.assets.get(tableId)
    if table is None:
        raise EEError(f"Collection.loadTable: Collection asset '{tableId}' not found.")
    return table


def _collection(c: Any, name: str) -> Coll:
    if not isinstance(c, Coll):
        raise EEError(f"{name}: expected a collection, got {type(c).__name__}.")
    return c


def _derive(c: Coll, items: list[Any]) -> Coll:
    return Coll(items, c.kind, dict(c.props), c.id)


@algo("Collection.filter")
def collection_filter(ctx: Any, collection: Coll, filter: Filter) -> Coll:
    c = _collection(collection, "Collection.filter")
    return _derive(c, [e for e in c.items if filter.pred(e)])


@algo("Collection.map")
def collection_map(ctx: Any, collection: Coll, baseAlgorithm: Any, dropNulls: bool = False
                   ) -> Coll:
    c = _collection(collection, "Collection.map")
    out = [baseAlgorithm(e) for e in c.items]
    return _derive(c, [e for e in out if e is not None] if dropNulls else out)


@algo("Collection.iterate")
def collection_iterate(ctx: Any, collection: Coll, function: Any, first: Any = None) -> Any:
    acc = first
    for e in _collection(collection, "Collection.iterate").items:
        acc = function(e, acc)
    return acc


@algo("Collection.size")
def collection_size(ctx: Any, collection: Coll) -> int:
    return len(_collection(collection, "Collection.size").items)


@algo("Collection.first")
def collection_first(ctx: Any, collection: Coll) -> Any:
    items = _collection(collection, "Collection.first").items
    if not items:
        raise EEError("Collection.first: Empty collection.")
    return items[0]


@algo("Collection.limit")
def collection_limit(ctx: Any, collection: Coll, limit: int | None = None,
                     key: str | None = None, ascending: bool = True) -> Coll:
    c = _collection(collection, "Collection.limit")
    items = list(c.items)
    if key:
        items.sort(key=lambda e: (e.props.get(key) is None, e.props.get(key)),
                   reverse=not ascending)
    return _derive(c, items[: limit if limit is not None else None])


@algo("Collection.toList")
def collection_to_list(ctx: Any, collection: Coll, count: int, offset: int = 0) -> list:
    return list(_collection(collection, "Collection.toList").items[offset : offset + count])


@algo("Collection.reduceColumns")
def reduce_columns(ctx: Any, collection: Coll, reducer: Reducer, selectors: list[str],
                   weightSelectors: Any = None) -> dict:
    cols = [[e.props.get(s) for e in collection.items] for s in selectors]
    if reducer.kind == "toList":
        return {reducer.outputs[0]: cols[0]}
    if reducer.kind == "repeat" and reducer.parts[0].kind == "toList":
        return {reducer.parts[0].outputs[0]: cols}
    raise EEError(f"Emulator: reduceColumns with Reducer.{reducer.kind} is not supported")


@algo("AggregateFeatureCollection.array")
def aggregate_array(ctx: Any, collection: Coll, property: str) -> list:
    return [e.props[property] for e in collection.items if e.props.get(property) is not None]


@algo("AggregateFeatureCollection.max")
def aggregate_max(ctx: Any, collection: Coll, property: str) -> Any:
    values = [e.props[property] for e in collection.items if e.props.get(property) is not None]
    return max(values) if values else None


@algo("Element.get")
def element_get(ctx: Any, object: Any, property: str) -> Any:
    return object.props.get(property)


def _copy(e: Any, props: dict[str, Any]) -> Any:
    if isinstance(e, Img):
        return Img(e.bands, e.read, props, e.id, e.footprint, e.native, e.types)
    if isinstance(e, Coll):
        return Coll(e.items, e.kind, props, e.id)
    return Feat(e.geom, props, e.id)


@algo("Element.set")
def element_set(ctx: Any, object: Any, key: str, value: Any) -> Any:
    return _copy(object, {**object.props, key: value})


@algo("Element.setMulti")
def element_set_multi(ctx: Any, object: Any, properties: dict) -> Any:
    return _copy(object, {**object.props, **properties})


@algo("Element.toDictionary")
def element_to_dictionary(ctx: Any, element: Any, properties: list[str] | None = None) -> dict:
    props = element.props
    keys = properties if properties is not None else [k for k in props
                                                      if not k.startswith("system:")]
    return {k: props[k] for k in keys if k in props}


@algo("Dictionary.get")
def dictionary_get(ctx: Any, dictionary: dict, key: str, defaultValue: Any = None) -> Any:
    if key not in dictionary and defaultValue is None:
        raise EEError(f"Dictionary.get: Dictionary does not contain key: {key}.")
    return dictionary.get(key, defaultValue)


@algo("List.slice")
def list_slice(ctx: Any, list: list, start: int, end: int | None = None, step: int | None = None
               ) -> list:
    return list[start:end:step]


@algo("List.map")
def list_map(ctx: Any, list: list, baseAlgorithm: Any, dropNulls: bool = False) -> list:
    out = [baseAlgorithm(v) for v in list]
    return [v for v in out if v is not None] if dropNulls else out


@algo("List.distinct")
def list_distinct(ctx: Any, list: list) -> list:
    """"A copy of list without duplicate elements": the first of each, in order."""
    out: Any = []
    for v in list:
        if v not in out:
            out.append(v)
    return out


# --- numbers: ee.Number's arithmetic (plain Python numbers on the server side) -----------


def _num(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise EEError(f"{name}: expected a number, got {type(v).__name__}.")
    return v


def _binary(name: str, op: Any) -> None:
    def number_op(ctx: Any, left: Any, right: Any) -> Any:
        return op(_num(left, name), _num(right, name))

    algo(name)(number_op)


_binary("Number.add", operator.add)
_binary("Number.subtract", operator.sub)
_binary("Number.multiply", operator.mul)
#: "returning 0 for division by 0"
_binary("Number.divide", lambda a, b: 0 if b == 0 else a / b)
#: "the remainder of the first value divided by the second": Java's %, the sign of the first
_binary("Number.mod", lambda a, b: 0 if b == 0 else math.fmod(a, b))
#: comparisons "return 1 if and only if ..."
_binary("Number.lt", lambda a, b: int(a < b))
_binary("Number.gte", lambda a, b: int(a >= b))


@algo("Number.floor")
def number_floor(ctx: Any, input: Any) -> int:
    return math.floor(_num(input, "Number.floor"))


@algo("Number.int")
def number_int(ctx: Any, input: Any) -> int:
    """"Casts the input value to a signed 32-bit integer" (toward zero, wrapping)."""
    v = int(_num(input, "Number.int"))
    return (v + 2**31) % 2**32 - 2**31


@algo("Geometry.coordinates")
def geometry_coordinates(ctx: Any, geometry: Geom) -> list:
    """"A GeoJSON-style list of the geometry's coordinates"."""
    from shapely.geometry import mapping

    def lists(v: Any) -> Any:
        return [lists(x) for x in v] if isinstance(v, tuple | list) else v

    return lists(mapping(geometry.shape)["coordinates"])


@algo("List.get")
def list_get(ctx: Any, list: list, index: int) -> Any:
    if isinstance(index, bool) or not isinstance(index, int):
        raise EEError(f"List.get: Parameter 'index' is required to be an integer, "
                      f"got {index!r}.")
    return list[index]


@algo("List.size")
def list_size(ctx: Any, list: list) -> int:
    return len(list)


_NUMBER_OPS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul,
               "divide": operator.truediv, "max": max, "min": min}
for _name, _op in _NUMBER_OPS.items():
    algo(f"Number.{_name}")(lambda ctx, left, right, _op=_op: _op(left, right))


# --- reducers ----------------------------------------------------------------------------


@algo("Reducer.mean")
def reducer_mean(ctx: Any) -> Reducer:
    return Reducer("mean", ("mean",))


@algo("Reducer.sum")
def reducer_sum(ctx: Any) -> Reducer:
    return Reducer("sum", ("sum",))


@algo("Reducer.unweighted")
def reducer_unweighted(ctx: Any, reducer: Reducer) -> Reducer:
    """Pixels count whole when their centre is in the region (the 'Weighted reductions' guide)."""
    parts = tuple(reducer_unweighted(ctx, p) for p in reducer.parts)
    return Reducer(reducer.kind, reducer.outputs, parts, weighted=False)


@algo("Reducer.toList")
def reducer_to_list(ctx: Any, tupleSize: Any = None, numOptional: Any = None) -> Reducer:
    return Reducer("toList", ("list",))


@algo("Reducer.repeat")
def reducer_repeat(ctx: Any, reducer: Reducer, count: int) -> Reducer:
    return Reducer("repeat", reducer.outputs, (reducer,))


@algo("Reducer.combine")
def reducer_combine(ctx: Any, reducer1: Reducer, reducer2: Reducer, outputPrefix: str = "",
                    sharedInputs: bool = False) -> Reducer:
    parts = tuple(Reducer(r.kind, tuple(outputPrefix + o for o in r.outputs), r.parts,
                          r.weighted) for r in (reducer1, reducer2))
    return Reducer("combine", tuple(o for r in parts for o in r.outputs), parts)


# --- images and image collections --------------------------------------------------------


@algo("ImageCollection.load")
def image_collection_load(ctx: Any, id: str, version: Any = None) -> Coll:
    images = ctx.catalog.collection(id)
    if not images:
        raise EEError(f"ImageCollection.load: ImageCollection asset '{id}' not found "
                      "(does not exist or caller does not have access).")
    return Coll(list(images), "ImageCollection", {}, id)


@algo("Image.load")
def image_load(ctx: Any, id: str, version: Any = None) -> Img:
    img = ctx.catalog.image(id)
    if img is None:
        raise EEError(f"Image.load: Image asset '{id}' not found "
                      "(does not exist or caller does not have access).")
    return img


@algo("ImageCollection.fromImages")
def image_collection_from_images(ctx: Any, images: list[Img]) -> Coll:
    return Coll(list(images), "ImageCollection")


@algo("ImageCollection.mosaic")
def mosaic(ctx: Any, collection: Coll) -> Img:
    """Last image on top; EE's default projection (EPSG:4326, 1°) since the inputs may differ."""
    images = [i for i in collection.items if isinstance(i, Img)]
    bands = images[0].bands if images else []
    # The latest read, read-only: a graph that selects each band of one mosaic (xee's
    # band-per-image collections) reads it once per request instead of once per band.
    last: list[tuple[Grid, np.ndarray]] = []

    def read(grid: Grid) -> np.ndarray:
        hit = last[0] if last else None
        if hit is not None and hit[0] == grid:
            return hit[1]
        out = np.full((grid.height, grid.width, len(bands)), np.nan, dtype=np.float32)
        for img in images:  # per band value: a later image's data replaces what is under it
            v = img.read(grid)
            ok = ~np.isnan(v)
            out[ok] = v[ok]
        out.setflags(write=False)
        last[:] = [(grid, out)]
        return out

    from shapely import union_all

    fp = union_all([i.footprint for i in images]) if images and all(
        i.footprint is not None for i in images) else None
    return Img(list(bands), read, {}, None, fp, None,
               tuple(images[0].band_types()) if images else None)


def _image(v: Any) -> Img:
    if isinstance(v, Img):
        return v
    if isinstance(v, (int, float, list)):
        return image_constant(None, v)
    raise EEError(f"Expected an image, got {type(v).__name__}.")


def _int_type(lo: float, hi: float) -> str:
    """EE's smallest integer pixel type holding [lo, hi]."""
    for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32"):
        info = np.iinfo(np.dtype(PIXEL_TYPES[t]))
        if info.min <= lo and hi <= info.max:
            return t
    return "int64"


def union_type(a: str, b: str) -> str:
    """The pixel type holding values of both types (what ``unmask`` and ``where`` produce).

    An integer range beyond float's 24-bit mantissa needs a double, as EE promotes it.
    """
    if a == b:
        return a
    if "double" in (a, b):
        return "double"
    ints = [t for t in (a, b) if t not in ("float", "double")]
    if "float" in (a, b):
        wide = any(max(abs(np.iinfo(np.dtype(PIXEL_TYPES[t])).min),
                       np.iinfo(np.dtype(PIXEL_TYPES[t])).max) > 2**24 for t in ints)
        return "double" if wide else "float"
    infos = [np.iinfo(np.dtype(PIXEL_TYPES[t])) for t in ints]
    return _int_type(min(int(i.min) for i in infos), max(int(i.max) for i in infos))


@algo("Image.constant")
def image_constant(ctx: Any, value: Any) -> Img:
    raw = np.atleast_1d(np.asarray(value))
    vals = raw.astype(np.float32)
    names = ["constant"] if len(vals) == 1 else [f"constant_{i}" for i in range(len(vals))]
    types = tuple(_int_type(float(v), float(v)) if float(v).is_integer()
                  and np.issubdtype(raw.dtype, np.integer) else "float" for v in raw)
    return Img(names, lambda g: np.broadcast_to(vals, (g.height, g.width, len(vals))).copy(),
               types=types)


def _map_bands(img: Img, bands: list[str], fn: Any, types: list[str] | None = None) -> Img:
    return Img(bands, lambda g: fn(img.read(g)), dict(img.props), img.id, img.footprint,
               img.native, tuple(types) if types is not None else img.types)


_CASTS = {"toFloat": "float", "float": "float", "toDouble": "double", "double": "double",
          "toInt8": "int8", "int8": "int8", "toUint8": "uint8", "uint8": "uint8",
          "toByte": "uint8", "byte": "uint8", "toInt16": "int16", "int16": "int16",
          "toShort": "int16", "toUint16": "uint16", "uint16": "uint16", "toInt32": "int32",
          "int32": "int32", "toInt": "int32", "int": "int32", "toUint32": "uint32",
          "uint32": "uint32", "toInt64": "int64", "toLong": "int64", "int64": "int64"}


def _cast(to: str) -> Any:
    def cast(ctx: Any, value: Img) -> Img:
        img = _image(value)
        if to in ("float", "double"):
            return _map_bands(img, img.bands, lambda v: v, [to] * len(img.bands))
        info = np.iinfo(np.dtype(PIXEL_TYPES[to]))

        def fn(v: np.ndarray) -> np.ndarray:  # truncate towards zero, clamp to the range
            return np.where(np.isnan(v), v, np.clip(np.trunc(v), info.min, info.max))

        return _map_bands(img, img.bands, fn, [to] * len(img.bands))

    return cast


for _cast_name, _cast_to in _CASTS.items():
    algo(f"Image.{_cast_name}")(_cast(_cast_to))


def _match(bands: list[str], selectors: list[Any]) -> list[int]:
    out: list[int] = []
    for s in selectors:
        if isinstance(s, int):
            if not -len(bands) <= s < len(bands):
                raise EEError(f"Image.select: Band index out of bounds: {s}.")
            out.append(s % len(bands))
            continue
        hits = [i for i, b in enumerate(bands) if re.fullmatch(str(s), b)]
        if not hits:
            raise EEError(f"Image.select: Pattern '{s}' did not match any bands. "
                          f"Available bands: [{', '.join(bands[:8])}{', ...' * (len(bands) > 8)}]")
        out.extend(hits)
    return out


@algo("Image.select")
def image_select(ctx: Any, input: Img, bandSelectors: list[Any], newNames: list[str] | None = None
                 ) -> Img:
    idx = _match(input.bands, bandSelectors)
    names = list(newNames) if newNames else [input.bands[i] for i in idx]
    types = input.band_types()
    return _map_bands(input, names, lambda v: v[..., idx], [types[i] for i in idx])


@algo("Image.rename")
def image_rename(ctx: Any, input: Img, names: list[str]) -> Img:
    if len(names) != len(input.bands):
        raise EEError(f"Image.rename: Can't rename {len(input.bands)} bands to {len(names)} names.")
    return _map_bands(input, list(names), lambda v: v)


@algo("Image.bandNames")
def image_band_names(ctx: Any, image: Img) -> list[str]:
    return list(image.bands)


@algo("Image.addBands")
def image_add_bands(ctx: Any, dstImg: Img, srcImg: Img, names: list[str] | None = None,
                    overwrite: bool = False) -> Img:
    src_idx = _match(srcImg.bands, names) if names else list(range(len(srcImg.bands)))
    bands = list(dstImg.bands)
    keep = list(range(len(bands)))
    for i in src_idx:  # EE renames duplicates _1, _2 ... unless overwrite
        name = srcImg.bands[i]
        if name in bands and overwrite:
            keep.remove(bands.index(name))
        elif name in bands:
            k = 1
            while f"{name}_{k}" in bands:
                k += 1
            name = f"{name}_{k}"
        bands.append(name)
    out_bands = [bands[i] for i in keep] + bands[len(dstImg.bands):]
    dst_t, src_t = dstImg.band_types(), srcImg.band_types()
    types = tuple([dst_t[i] for i in keep] + [src_t[i] for i in src_idx])

    def read(g: Grid) -> np.ndarray:
        return np.concatenate([dstImg.read(g)[..., keep], srcImg.read(g)[..., src_idx]], axis=-1)

    return Img(out_bands, read, dict(dstImg.props), dstImg.id, dstImg.footprint, dstImg.native,
               types)


@algo("Image.mask", "Image.updateMask")
def image_mask(ctx: Any, image: Img, mask: Any = None) -> Img:
    """One argument: the mask as an image (1 valid, 0 masked). Two: apply a mask."""
    if mask is None:
        return _map_bands(image, image.bands, lambda v: (~np.isnan(v)).astype(np.float32),
                          ["float"] * len(image.bands))
    m = _image(mask)

    def read(g: Grid) -> np.ndarray:
        v, mv = image.read(g), m.read(g)
        bad = np.isnan(mv) | (mv == 0)
        return np.where(bad if mv.shape[-1] == v.shape[-1] else bad.any(-1, keepdims=True),
                        np.float32(np.nan), v)

    return Img(image.bands, read, dict(image.props), image.id, image.footprint, image.native,
               image.types)


@algo("Image.unmask")
def image_unmask(ctx: Any, input: Img, value: Any = None, sameFootprint: bool = True) -> Img:
    fill = _image(0 if value is None else value)

    def read(g: Grid) -> np.ndarray:
        v = input.read(g)
        return np.where(np.isnan(v), fill.read(g), v).astype(np.float32)

    fill_t = fill.band_types()
    types = tuple(union_type(t, fill_t[i if len(fill_t) > 1 else 0])
                  for i, t in enumerate(input.band_types()))
    return Img(input.bands, read, dict(input.props), input.id, input.footprint, input.native,
               types)


@algo("Image.projection")
def image_projection(ctx: Any, image: Img) -> Projection:
    return image.projection


@algo("Image.reduceRegions")
def image_reduce_regions(ctx: Any, image: Img, collection: Coll, reducer: Reducer,
                         scale: float | None = None, crs: Any = None, crsTransform: Any = None,
                         tileScale: float = 1, maxPixelsPerRegion: Any = None) -> Coll:
    if not 0.1 <= float(tileScale) <= 16:
        raise EEError("Image.reduceRegions: tileScale must be between 0.1 and 16.")
    coll = _collection(collection, "Image.reduceRegions")
    limit = getattr(ctx, "memory_features", None)
    if limit is not None and len(coll.items) > limit * float(tileScale):
        raise EEError("User memory limit exceeded.")  # the same request fails every time
    return reduce_regions(image, coll, reducer, scale, crs, crsTransform)


@algo("Image.reduceRegion")
def image_reduce_region(ctx: Any, image: Img, reducer: Reducer, geometry: Any = None,
                        scale: float | None = None, crs: Any = None, crsTransform: Any = None,
                        bestEffort: bool = False, maxPixels: Any = None, tileScale: float = 1
                        ) -> dict:
    geom = geometry if isinstance(geometry, Geom) else Geom(image.footprint)
    if geom.shape is None:
        raise EEError("Image.reduceRegion: Provide 'geometry' parameter when aggregating over "
                      "an unbounded image.")
    out = reduce_regions(image, Coll([Feat(geom)]), reducer, scale, crs, crsTransform,
                         keep_null=True)
    return out.items[0].props
