"""The heat raster of ``aether serve``: each pixel shows the cell under it, bytes as promised."""

from __future__ import annotations

import numpy as np
from pyproj import Transformer

from aether.query.heat import LEVELS, MAX_PIXELS, NODATA, heat_raster

CRS = "EPSG:32635"


def _pixel_of(h, lon: float, lat: float) -> tuple[int, int]:
    (s, w), (n, e) = h.bounds
    merc = lambda la: np.log(np.tan(np.pi / 4 + np.radians(la) / 2))  # noqa: E731
    row = int((merc(n) - merc(lat)) / (merc(n) - merc(s)) * h.shape[0])
    return row, int((lon - w) / (e - w) * h.shape[1])


def _check_centres(h, x: np.ndarray, y: np.ndarray) -> None:
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    for i in range(0, len(x), max(1, len(x) // 50)):
        assert h.pixels[_pixel_of(h, lon[i], lat[i])] == i


def test_square_grid_pixels_show_the_cell_under_them() -> None:
    i, j = np.meshgrid(np.arange(40), np.arange(30))
    x, y = 385_000 + 50.0 * i.ravel() + 25, 6_671_000 + 50.0 * j.ravel() + 25
    h = heat_raster(x, y, CRS)
    assert h.shape[0] * h.shape[1] <= MAX_PIXELS
    _check_centres(h, x, y)
    assert h.pixels[0, 0] == len(x)  # the corner of the Mercator box is outside the tilted grid
    assert set(np.unique(h.pixels)) == set(range(len(x) + 1))  # every cell drawn


def test_hexagon_like_grid_uses_the_nearest_centre() -> None:
    rows, cols, d = 20, 20, 100.0  # hexagonal packing: odd rows shifted by half a spacing
    i, j = np.meshgrid(np.arange(cols), np.arange(rows))
    x = 385_000 + d * (i + 0.5 * (j % 2)).ravel()
    y = 6_671_000 + d * np.sqrt(3) / 2 * j.ravel()
    h = heat_raster(x, y, CRS)
    _check_centres(h, x, y)


def test_encode_quantises_over_the_range_and_marks_no_data() -> None:
    x, y = np.array([385_025.0, 385_075.0, 385_125.0]), np.array([6_671_025.0] * 3)
    h = heat_raster(x, y, CRS)
    out = np.frombuffer(h.encode(np.array([0.1, np.nan, 0.3], np.float32), 0.1, 0.3), np.uint8)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    flat = out.reshape(h.shape)
    assert [flat[_pixel_of(h, a, b)] for a, b in zip(lon, lat, strict=True)] == [0, NODATA,
                                                                                   LEVELS]
    assert len(out) == h.shape[0] * h.shape[1]


def _hexes(x0: float, y0: float, n: int = 20, d: float = 800.0) -> tuple[np.ndarray, np.ndarray]:
    """An n × n patch of hexagonally packed centres ``d`` apart (H3 r8 is ~800 m)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n))
    return x0 + d * (i + 0.5 * (j % 2)).ravel(), y0 + d * np.sqrt(3) / 2 * j.ravel()


def test_towns_far_apart_stay_within_the_pixel_budget() -> None:
    """Patches of cells 300 km apart (a user's towns): the raster stays within MAX_PIXELS
    and still draws every cell; 3,000 km apart the pixels outgrow the cells, and
    ``cells_drawn`` says how many are still drawn (serve logs it)."""
    near = [_hexes(400_000 + dx, 4_400_000 + dy) for dx, dy in ((0, 0), (300_000, 200_000))]
    x, y = np.concatenate([a for a, _ in near]), np.concatenate([b for _, b in near])
    h = heat_raster(x, y, "EPSG:32610")
    assert h.shape[0] * h.shape[1] <= MAX_PIXELS
    assert h.cells_drawn(len(x)) == len(x)
    far = [_hexes(300_000 + dx, 4_000_000 + dy) for dx, dy in ((0, 0), (0, 3_000_000))]
    x, y = np.concatenate([a for a, _ in far]), np.concatenate([b for _, b in far])
    h = heat_raster(x, y, "EPSG:32610")
    assert h.shape[0] * h.shape[1] <= MAX_PIXELS
    assert 0 < h.cells_drawn(len(x)) < len(x)
