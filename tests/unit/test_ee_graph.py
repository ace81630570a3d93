"""What the Earth Engine sources ask of the server, read from the serialised graphs.

The genuine ``ee`` client builds and serialises the graphs (initialised in-process against an
emulator without tiles: nothing is computed). Oracles are independent of the code checked:
polygon areas from shapely, request sizes from EE's documented byte accounting.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from aether.embeddings.earthengine.source import Feature, reduce_regions_graph
from aether.errors import InputError

LIMIT = 50_331_648  # "Total request size (N bytes) must be less than or equal to 50331648 bytes"


@pytest.fixture(scope="module")
def ee_client():
    import ee

    from aether.testing.emulator import Emulator, connect

    connect(Emulator())
    yield ee
    ee.Reset()


def _invocations(expr: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The argument nodes of every invocation of ``name`` (value references resolved)."""
    values = expr["values"]

    def resolve(node: Any) -> Any:
        while isinstance(node, dict) and "valueReference" in node:
            node = values[node["valueReference"]]
        return node

    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        node = resolve(node)
        if isinstance(node, dict):
            inv = node.get("functionInvocationValue")
            if inv and inv.get("functionName") == name:
                found.append({k: resolve(v) for k, v in inv["arguments"].items()})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(values[expr["result"]])
    return found


def _constant(node: dict[str, Any], name: str, arg: str) -> Any:
    inv = node["functionInvocationValue"]
    assert inv["functionName"] == name, inv
    return inv["arguments"][arg]["constantValue"]


def _inscribed_area_ratio(radius: float, max_error: float) -> float:
    """Area of the regular polygon with the fewest vertices whose edges stray at most
    ``max_error`` from the circle, over the circle's area (shapely)."""
    from shapely.geometry import Polygon

    n = 3
    while True:
        ring = [(radius * math.cos(2 * math.pi * k / n), radius * math.sin(2 * math.pi * k / n))
                for k in range(n)]
        poly = Polygon(ring)
        # the largest stray is at an edge's midpoint: the circle minus the apothem
        if radius - poly.exterior.interpolate(0.5 / n, normalized=True).distance(
                poly.centroid) <= max_error:
            return poly.area / (math.pi * radius**2)
        n += 1


def test_buffers_are_local_circles_within_1e3_of_their_area(ee_client) -> None:
    items = [Feature("a", 100.0, 24.94, 60.17), Feature("b", 200.0, 24.95, 60.171),
             Feature("c", 500.0, 24.96, 60.172)]
    expr = ee_client.serializer.encode(reduce_regions_graph(items, 2024), for_cloud_api=True)
    buffers = _invocations(expr, "Geometry.buffer")
    assert len(buffers) == 3
    for b in buffers:
        r = b["distance"]["constantValue"]
        assert "maxError" in b and "proj" in b, "EE's default: geodesic, 1% of r (-1.3% area)"
        err = _constant(b["maxError"], "ErrorMargin", "value")
        assert _constant(b["proj"], "Projection", "crs") == "EPSG:32635"  # Helsinki's UTM
        ratio = _inscribed_area_ratio(r, err)
        assert 1 - 1e-3 <= ratio < 1, (r, err, ratio)
        assert err > 0.5e-3 * r  # not needlessly fine (vertex count grows as 1/sqrt(err))
    # the default maxError would miss the tolerance, so the check above can fail
    assert _inscribed_area_ratio(100.0, 1.0) < 1 - 1e-2


def test_xee_bands_are_cast_and_chunks_fit_the_served_bytes(ee_client) -> None:
    from aether.core import aef
    from aether.embeddings import xee

    expr = ee_client.serializer.encode(xee._collection(2024), for_cloud_api=True)
    assert len(_invocations(expr, "Image.toFloat")) == aef.N_BANDS  # a known value type
    # served after xee's int32 sentinel unmask: float32 ∪ int32 needs float64, 8 bytes + mask
    per_band_pixel = 8 + 1
    assert aef.N_BANDS * xee.CHUNK_PX**2 * per_band_pixel <= 0.9 * LIMIT
    assert aef.N_BANDS * (xee.CHUNK_PX + 64) ** 2 * per_band_pixel > 0.9 * LIMIT
    assert xee.REQUEST_BYTES == LIMIT


def test_an_xee_chunk_over_the_limit_is_refused_in_one_line() -> None:
    from aether.embeddings.earthengine.session import EESettings
    from aether.embeddings.xee import XeeSource

    with pytest.raises(InputError) as err:
        XeeSource(EESettings(), chunk=384)  # fitted 5-byte float32 values, not what is served
    assert "xee_chunk=384" in str(err.value) and "\n" not in str(err.value)  # Python's name
    with pytest.raises(InputError):
        XeeSource(EESettings(), chunk=0)
    assert XeeSource(EESettings(), chunk=128).chunk == 128
