"""Grid cells over a place, square or H3, and their reduction by the one zonal kernel.

A source that has pixels (COG tiles, xee chunks) hands each ``zonal.PixelBlock`` to
``Cells.sums`` and adds the results per cell; ``Cells.frame`` turns the totals into the
``grid_embeddings`` table. Square cells are aligned to multiples of their size in the
place's UTM crs and cover its bounding box (separable coverage, two matrix products per
block); H3 cells are those whose centre lies in the place, reduced by their exact polygon
coverage in the UTM crs. Means are area-weighted, with ``valid_fraction`` and ``norm``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from aether.core import aef, zonal
from aether.errors import InputError

if TYPE_CHECKING:

    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry

#: Largest square cell (m) and coarsest H3 resolution accepted: a grid, not a single value.
MAX_CELL_M = 100_000.0
MIN_H3_RES = 5


@dataclass(frozen=True)
class CellSpec:
    """``100m`` (square cells of 100 m) or ``h3:9`` (H3 resolution 9)."""

    kind: str  # "square" | "h3"
    size: float  # metres for square cells, the resolution for H3

    @property
    def label(self) -> str:
        """The part of the table name that says which grid it is: ``100m``, ``h3r9``."""
        return f"{self.size:g}m" if self.kind == "square" else f"h3r{int(self.size)}"


def parse_cell(spec: str | float | CellSpec) -> CellSpec:
    """A cell spec from ``100``, ``'100m'``, ``'0.5km'`` or ``'h3:9'``; InputError otherwise."""
    if isinstance(spec, CellSpec):
        return spec
    text = str(spec).strip().lower()
    m = re.fullmatch(r"h3[:r]?(\d+)", text)
    if m:
        res = int(m.group(1))
        try:
            import h3
        except ImportError:
            raise InputError("H3 cells need the h3 package", "pip install 'aether[grid]'"
                             ) from None

        edge = h3.average_hexagon_edge_length(res, "m") if res <= 15 else 0.0
        if not MIN_H3_RES <= res <= 15 or edge < aef.PIXEL_SIZE_M:
            raise InputError(f"H3 resolution {res} is out of range",
                             f"use h3:{MIN_H3_RES}..h3:12 (cells at least the "
                             f"{aef.PIXEL_SIZE_M:g} m pixel size), e.g. --cell h3:9")
        return CellSpec("h3", float(res))
    scale = 1000.0 if text.endswith("km") else 1.0
    try:
        value = float(text.removesuffix("km").removesuffix("m")) * scale
    except ValueError:
        raise InputError(f"cannot read cell size {spec!r}",
                         "use e.g. --cell 100m, --cell 0.5km or --cell h3:9") from None
    if not aef.PIXEL_SIZE_M <= value <= MAX_CELL_M:
        raise InputError(f"cell size {value:g} m is out of range",
                         f"use at least the {aef.PIXEL_SIZE_M:g} m pixel size, e.g. --cell 100m")
    return CellSpec("square", value)


@dataclass
class Cells:
    """The cells of one grid in a projected crs: ids, centres, areas and how to reduce."""

    spec: CellSpec
    crs: str
    ids: list[str]
    x: np.ndarray  # centres, in crs
    y: np.ndarray
    area_px: np.ndarray  # each cell's area, in pixels
    x_edges: np.ndarray | None = None  # square cells: column edges (increasing)
    y_edges: np.ndarray | None = None  # square cells: row edges (decreasing: north first)
    polygons: list = field(default_factory=list)  # H3 cells: shapely polygons in crs

    def __len__(self) -> int:
        return len(self.ids)

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of all cells, in crs."""
        if self.x_edges is not None and self.y_edges is not None:
            return (float(self.x_edges[0]), float(self.y_edges[-1]),
                    float(self.x_edges[-1]), float(self.y_edges[0]))
        b = self._poly_bounds
        return (float(b[:, 0].min()), float(b[:, 1].min()),
                float(b[:, 2].max()), float(b[:, 3].max()))

    @cached_property
    def _poly_bounds(self) -> np.ndarray:
        import shapely

        return shapely.bounds(np.asarray(self.polygons, dtype=object))

    def sums(self, block: zonal.PixelBlock) -> tuple[np.ndarray, zonal.Partial]:
        """(indices of the cells the block touches, their partial sums from this block).

        The block is in the cells' crs: sources mosaic other zones' tiles onto it first.
        """
        if self.x_edges is None or self.y_edges is None:
            idx = self._touching(block.bounds())
            return idx, zonal.polygon_partial_sums(block, [self.polygons[i] for i in idx])
        xmin, ymin, xmax, ymax = block.bounds()
        xe, ye = self.x_edges, self.y_edges
        c0 = max(int(np.searchsorted(xe, xmin, "right")) - 1, 0)
        c1 = min(int(np.searchsorted(xe, xmax, "left")), len(xe) - 1)
        r0 = max(int(np.searchsorted(-ye, -ymax, "right")) - 1, 0)
        r1 = min(int(np.searchsorted(-ye, -ymin, "left")), len(ye) - 1)
        if c0 >= c1 or r0 >= r1:
            return np.zeros(0, np.int64), zonal.Partial.zeros(0, block.values.shape[-1])
        part = zonal.grid_partial_sums(block, xe[c0 : c1 + 1], ye[r0 : r1 + 1])
        rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        return (rows * (len(xe) - 1) + cols).ravel(), part

    def _touching(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        b = self._poly_bounds
        xmin, ymin, xmax, ymax = bounds
        return np.flatnonzero((b[:, 0] < xmax) & (b[:, 2] > xmin)
                              & (b[:, 1] < ymax) & (b[:, 3] > ymin))

    def frame(self, total: zonal.Partial) -> gpd.GeoDataFrame:
        """The grid_embeddings table from the summed partials of every cell."""
        import geopandas as gpd
        import pandas as pd
        import shapely

        m = zonal.finalize_area(total, self.area_px)
        df = pd.DataFrame(m.mean, columns=list(aef.BANDS))
        df.insert(0, "cell_id", self.ids)
        df["weight"] = m.weight.astype(np.float32)
        df["valid_fraction"] = m.valid_fraction.astype(np.float32)
        df["norm"] = m.norm.astype(np.float32)
        df["x"], df["y"] = self.x, self.y
        if self.polygons:
            geoms = self.polygons
        else:
            half = self.spec.size / 2
            geoms = shapely.box(self.x - half, self.y - half, self.x + half, self.y + half)
        geom = gpd.GeoSeries(geoms, crs=self.crs).to_crs("EPSG:4326")
        out = gpd.GeoDataFrame(df, geometry=geom.values, crs="EPSG:4326")
        out.attrs["crs"] = self.crs  # the crs of x / y
        return out


def accumulate(n: int, parts: list[tuple[np.ndarray, zonal.Partial]]) -> zonal.Partial:
    """Add per-block ``Cells.sums`` results into one Partial over all ``n`` cells."""
    total = zonal.Partial.zeros(n, aef.N_BANDS)
    for idx, part in parts:
        np.add.at(total.weighted_sum, idx, part.weighted_sum)
        np.add.at(total.valid_weight, idx, part.valid_weight)
    return total


def make_cells(boundary: BaseGeometry, crs: str, spec: CellSpec, name: str = "the place"
               ) -> Cells:
    """The cells of ``spec`` over ``boundary`` (lon/lat), in the UTM ``crs``."""
    import geopandas as gpd

    if spec.kind == "h3":
        return _h3_cells(boundary, crs, int(spec.size), name)
    projected = gpd.GeoSeries([boundary], crs="EPSG:4326").to_crs(crs)
    size = spec.size
    xmin, ymin, xmax, ymax = projected.total_bounds
    x_edges = np.arange(np.floor(xmin / size), np.ceil(xmax / size) + 1) * size
    y_edges = np.arange(np.ceil(ymax / size), np.floor(ymin / size) - 1, -1) * size
    xx, yy = np.meshgrid((x_edges[:-1] + x_edges[1:]) / 2, (y_edges[:-1] + y_edges[1:]) / 2)
    ids = [f"{int(a)}_{int(b)}" for a, b in zip(xx.ravel(), yy.ravel(), strict=True)]
    area = np.full(len(ids), size * size / aef.PIXEL_SIZE_M**2)
    return Cells(spec, crs, ids, xx.ravel(), yy.ravel(), area, x_edges, y_edges)


def _h3_cells(boundary: BaseGeometry, crs: str, res: int, name: str) -> Cells:
    """H3 cells whose centre lies in the place, as polygons in its UTM crs."""
    import h3
    import shapely
    from pyproj import Transformer

    ids = sorted(h3.geo_to_cells(boundary, res))
    if not ids:
        raise InputError(f"no H3 cell of resolution {res} has its centre in {name}",
                         "use a finer resolution, e.g. --cell h3:9")
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    polys = []
    for c in ids:
        lat, lon = np.asarray(h3.cell_to_boundary(c)).T
        polys.append(shapely.Polygon(np.column_stack(tr.transform(lon, lat))))
    cent = shapely.centroid(np.asarray(polys, dtype=object))
    area = shapely.area(np.asarray(polys, dtype=object)) / aef.PIXEL_SIZE_M**2
    return Cells(CellSpec("h3", float(res)), crs, ids, shapely.get_x(cent),
                 shapely.get_y(cent), area, polygons=polys)
