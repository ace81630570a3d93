"""Buffer shapes around a POI: exact circles, or the reference's square pixel windows.

A window is one number, the ``radius_m`` of the ``poi_embeddings`` key: a positive value is
a circle of that radius; a negative value ``-h`` is a square of side ``2h`` centred on the
centre of the pixel the POI falls in, on the raster's own grid (so ``-45`` is the reference
code's 9 × 9 px window and ``-95`` its 19 × 19 px one). The spec ``square:4,9`` names
squares by their pixel half-widths p (side 2p + 1 px), as the reference's ``pix_radius``.
Both shapes go through the zonal kernel's exact coverage (circles analytically, squares as
polygons), so a square cut by the raster's edge or by nodata averages the pixels it has.
"""

from __future__ import annotations

import math

import numpy as np

from aether import errors
from aether.core import zonal
from aether.core.aef import PIXEL_SIZE_M
from aether.errors import InputError


def is_square(radius_m: float) -> bool:
    return radius_m < 0


def square_radius(pix_radius: int) -> float:
    """The ``radius_m`` of a (2p + 1) × (2p + 1) px window."""
    return -(pix_radius + 0.5) * PIXEL_SIZE_M


def parse_window(spec: str) -> tuple[float, ...]:
    """``square:4,9`` (pixel half-widths) or ``circle:100,200`` (metres) to ``radius_m``s."""
    shape, _, values = spec.partition(":")
    try:  # every comma-separated entry is a number: an empty one is a mistake, not skipped
        nums = [float(v) for v in values.split(",")]
    except ValueError:
        nums = []
    if shape not in ("square", "circle") or not nums or min(nums) < 0 or (
            shape == "square" and any(v != int(v) for v in nums)) or (
            shape == "circle" and min(nums) <= 0):
        raise InputError(f"bad window {spec!r}",
                         "use square:P,... (pixel half-widths, e.g. square:4,9) or "
                         "circle:R,... (metres, e.g. circle:100,200)")
    if shape == "square":
        return tuple(square_radius(int(v)) for v in nums)
    return tuple(nums)


def extract_option(radius_m: float) -> str:
    """The ``aether extract`` option that makes rows of this ``radius_m`` key: ``--radius R``
    for a circle, ``--window square:P`` for a square (a hint's remedy)."""
    if is_square(radius_m):
        return f"--window square:{round(-radius_m / PIXEL_SIZE_M - 0.5)}"
    return f"--radius {radius_m:g}"


def reach(radius_m: float) -> float:
    """How far from the POI the window can reach (half a pixel of snapping for squares)."""
    r = abs(radius_m)
    return r * math.sqrt(2) + PIXEL_SIZE_M if is_square(radius_m) else r


def label(radius_m: float) -> str:
    """How a window is named in messages and docs."""
    if is_square(radius_m):
        side = round(-2 * radius_m / PIXEL_SIZE_M)
        return f"{side}×{side} px square"
    return f"{radius_m:g} m"


def area_px(radius_m: float, pixel_area: float) -> float:
    """The window's area in pixels (what ``valid_fraction`` divides by)."""
    r = abs(radius_m)
    return (4 * r * r if is_square(radius_m) else math.pi * r * r) / pixel_area


def snapped_squares(x: np.ndarray, y: np.ndarray, half: float, x0: float, y0: float,
                    dx: float, dy: float) -> np.ndarray:
    """(N, 4) boxes (xmin, ymin, xmax, ymax) of side 2·half around the centres of the pixels
    that hold (x, y), on a grid with origin (x0, y0) and steps (dx, dy) (dy < 0: north-up).
    A point on a pixel edge belongs to the pixel after it in the raster's order, as in
    rasterio's ``index``."""
    cx = x0 + (np.floor((np.asarray(x) - x0) / dx) + 0.5) * dx
    cy = y0 + (np.floor((np.asarray(y) - y0) / dy) + 0.5) * dy
    return np.column_stack([cx - half, cy - half, cx + half, cy + half])


def partial_sums(block: zonal.PixelBlock, x: np.ndarray, y: np.ndarray,
                 radius_m: float) -> zonal.Partial:
    """The kernel's partial sums over one window shape around each point."""
    if not is_square(radius_m):
        return zonal.partial_sums(block, x, y, radius_m)
    import shapely

    boxes = snapped_squares(x, y, -radius_m, block.x0, block.y0, block.dx, block.dy)
    return zonal.polygon_partial_sums(block, list(shapely.box(*boxes.T)))


def radii_partial_sums(block: zonal.PixelBlock, x: np.ndarray, y: np.ndarray,
                       radii: list[float]) -> list[zonal.Partial]:
    """Partial sums of every window shape, in ``radii`` order: the circles in one pass of the
    kernel over the block, the squares one by one."""
    circles = [r for r in radii if not is_square(r)]
    done = dict(zip(circles, zonal.radii_partial_sums(block, x, y, circles), strict=True)
                ) if circles else {}
    return [done[r] if r in done else partial_sums(block, x, y, r) for r in radii]


def finalize(partial: zonal.Partial, radius_m: float, pixel_area: float) -> zonal.Means:
    """Means of one window shape from combined partial sums."""
    return zonal.finalize_area(partial, area_px(radius_m, pixel_area))


def _as_radii(spec: str) -> str:
    """``--window SPEC`` as the Python API's ``radii`` list (for errors' Python hints)."""
    return f"[{', '.join(f'{r:g}' for r in parse_window(spec))}]"


errors.PYTHON_VALUES["window"] = _as_radii
