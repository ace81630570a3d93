"""The extract workflow: place → POIs → embedding source → tables (what `aether extract` calls).

Re-running with the same inputs is a no-op: the manifest records a hash of everything that
determines the output (the POI table's content, the tiles' index, radii, year, source
options without credentials) and the checksums of the outputs, which are checked too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether import __version__
from aether.errors import PlaceError, PoiError
from aether.io.tables import (
    BASEMAP_FILE,
    MANIFEST_FILE,
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    config_hash,
    read_json,
    sha256_file,
    sort_poi_embeddings,
    write_json,
    write_parquet,
)
from aether.places.place import Place, place_from_polygon, slugify
from aether.settings import (
    DEFAULT_RADII,
    DEFAULT_YEAR,
    check_radii,
    check_year,
    city_dir,
    use_settings,
)
from aether.settings import tiles as default_tiles

if TYPE_CHECKING:
    import geopandas as gpd

#: Source options that are secrets or endpoints: never part of the hash or the manifest.
PRIVATE_OPTIONS = frozenset({"ee_credentials", "ee_url"})


@dataclass
class ExtractRequest:
    """Everything `aether extract` was asked to do."""

    city: str | None
    data_dir: Path
    offline: bool = False
    pois: str | None = None
    source: str | None = None
    radii: Sequence[float] = DEFAULT_RADII
    year: int = DEFAULT_YEAR
    source_options: dict[str, Any] = field(default_factory=dict)
    place_options: dict[str, Any] = field(default_factory=dict)
    poi_options: dict[str, Any] = field(default_factory=dict)
    force: bool = False


@dataclass
class ExtractResult:
    """Where the tables are and what happened."""

    out_dir: Path
    place: Place
    n_pois: int
    n_rows: int
    up_to_date: bool
    seconds: float


def _resolve(req: ExtractRequest) -> tuple[Place | None, str, str, dict[str, Any]]:
    """Place, POI source spec, embedding source name and its options for a request."""
    options = dict(req.source_options)
    if req.offline:
        from aether.sample.city import ensure_sample, sample_place

        if req.city and sample_place(req.city) is not None and req.pois is None:
            sample = ensure_sample(req.data_dir)
            if _source_name(req) == "cog":
                options.setdefault("tiles", str(sample.tiles))
            return sample.place, f"pbf:{sample.pbf}", _source_name(req), options
        if req.pois is None:
            raise PlaceError(
                f"{req.city!r} is not an offline sample city",
                "use --city Helsinki with --offline, or give --pois FILE and --tiles DIR",
            )
        return None, req.pois, _source_name(req), options
    if req.city is None and not req.place_options and req.pois is None:
        raise PlaceError("no place given", "use --city NAME, --osm-id, --bbox or --boundary")
    if req.city is None and not req.place_options:
        return None, req.pois or "osm", _source_name(req), options
    from aether.places.place import resolve_place

    place = resolve_place(req.city, **req.place_options)
    return place, req.pois or "osm", _source_name(req), options


def _source_name(req: ExtractRequest) -> str:
    """The embedding source a request uses: as given, else cog offline and ee online."""
    return req.source or ("cog" if req.offline else "ee")


def _check_request(req: ExtractRequest) -> None:
    """What can be refused before any work: the city's slug and the source's options."""
    from aether.embeddings.base import source_options

    if req.city is not None:
        slugify(req.city)  # a name that cannot be a safe path fails before any work
    source_options(_source_name(req), req.source_options)


def _place_from_pois(name: str | None, pois: gpd.GeoDataFrame) -> Place:
    """A place for user-supplied POIs: the hull of their points, named after the city."""
    hull = pois.geometry.union_all().convex_hull.buffer(1e-4)
    return place_from_polygon(name or "pois", hull, slugify(name) if name else None)


@dataclass
class Inputs:
    """A request's place and pois table, with the embedding source to use and its options."""

    place: Place
    pois: gpd.GeoDataFrame
    poi_spec: str
    source: str
    source_options: dict[str, Any]


def request_inputs(req: ExtractRequest) -> Inputs:
    """Resolve the place and load the POIs of a request (what extract and ``aether.pois`` do)."""
    from aether.pois.load import load_pois

    place, poi_spec, source_name, options = _resolve(req)
    pois = load_pois(poi_spec, place, **req.poi_options)
    if len(pois) == 0:
        raise PoiError("no POIs found in the place", "check the place or the POI source")
    return Inputs(place or _place_from_pois(req.city, pois), pois, poi_spec, source_name, options)


def _pois_hash(pois: gpd.GeoDataFrame) -> str:
    cols = ["poi_id", "text", "category", "top_category", "name"]
    h = hashlib.sha256(pois[cols].to_csv(index=False).encode())
    h.update(b"".join(pois.geometry.to_wkb()))
    return h.hexdigest()[:16]


def run_extract(req: ExtractRequest) -> ExtractResult:
    """Run one extraction; a no-op when the manifest says the same outputs exist."""
    with use_settings(data_dir=req.data_dir):  # the osmnx cache lives in the data dir
        return _extract(req)


def _extract(req: ExtractRequest) -> ExtractResult:
    from aether.embeddings import get_source

    t0 = time.perf_counter()
    _check_request(req)
    radii = check_radii(tuple(req.radii))
    year = check_year(req.year)
    inputs = request_inputs(req)
    place, pois, poi_spec = inputs.place, inputs.pois, inputs.poi_spec
    source_name, options = inputs.source, dict(inputs.source_options)
    if source_name == "cog":  # the default tiles too, so the hash names what is read
        options.setdefault("tiles", default_tiles())
    out = city_dir(req.data_dir, place.slug, year)
    config = {
        "place": place.slug,
        "pois": _pois_hash(pois),
        "source": source_name,
        "source_options": {k: str(v) for k, v in sorted(options.items())
                           if k not in PRIVATE_OPTIONS and v is not None},
        "tiles_index": _index_checksum(options.get("tiles")),
        "radii": list(radii),
        "year": year,
    }
    chash = config_hash(config)
    if not req.force and _up_to_date(out, chash):
        return ExtractResult(out, place, len(pois), _rows(out), True, time.perf_counter() - t0)

    source = get_source(source_name, workdir=out / ".work" / source_name, **options)
    emb = sort_poi_embeddings(source.point_means(pois, radii, year))
    write_parquet(pois, out / POIS_FILE)
    write_parquet(emb, out / POI_EMBEDDINGS_FILE)
    if poi_spec.startswith("pbf:"):  # the maps' offline base layer
        from aether.pipeline.basemap import write_basemap

        write_basemap(poi_spec.split(":", 1)[1], place, out / BASEMAP_FILE)
    manifest = {
        "run_id": f"extract-{chash}",
        "aether_version": __version__,
        "config": config,
        "config_hash": chash,
        "inputs": {"city": req.city, "pois": poi_spec if ":" not in poi_spec
                   else poi_spec.split(":", 1)[0] + ":" + Path(poi_spec.split(":", 1)[1]).name},
        "versions": _versions(),
        "outputs": {
            name: {"rows": rows, "sha256": sha256_file(out / name)}
            for name, rows in ((POIS_FILE, len(pois)), (POI_EMBEDDINGS_FILE, len(emb)))
        },
        "place": {"name": place.name, "crs": place.crs, "bbox": list(place.bbox)},
    }
    write_json(manifest, out / MANIFEST_FILE)
    return ExtractResult(out, place, len(pois), len(emb), False, time.perf_counter() - t0)


def _index_checksum(tiles: object) -> str | None:
    if tiles is None or "://" in str(tiles):
        return None if tiles is None else str(tiles)
    from aether.core.aef import INDEX_NAME

    p = Path(str(tiles))
    p = p / INDEX_NAME if p.is_dir() else p
    return sha256_file(p) if p.is_file() else None


def _up_to_date(out: Path, chash: str) -> bool:
    """True when the manifest has this config hash and every output matches its checksum."""
    mpath = out / MANIFEST_FILE
    if not mpath.is_file():
        return False
    try:
        m = read_json(mpath)
    except ValueError:
        return False
    if m.get("config_hash") != chash:
        return False
    return all((out / n).is_file() and sha256_file(out / n) == o["sha256"]
               for n, o in m.get("outputs", {}).items())


def _rows(out: Path) -> int:
    return int(read_json(out / MANIFEST_FILE)["outputs"][POI_EMBEDDINGS_FILE]["rows"])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "pandas", "rasterio", "dask", "earthengine-api", "osmnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def parse_cell(spec: str | float) -> float:
    """A square cell size in metres from ``100``, ``'100m'`` or ``'0.5km'`` (see ``grids``)."""
    from aether.core.cells import parse_cell as parse_spec
    from aether.errors import InputError

    cell = parse_spec(spec)
    if cell.kind != "square":
        raise InputError(f"{spec!r} is not a square cell size", "use e.g. 100m")
    return cell.size


def run_grid(req: ExtractRequest, cell: str | float = 100.0, *, zarr: bool = False
             ) -> tuple[Path, int]:
    """Area-weighted cell means over the place: ``grid_embeddings_<cell>.parquet``.

    With ``zarr``, square grids are also written as a (band, y, x) Zarr store of the same
    means next to it, for array tools (xarray, heat maps).
    """
    with use_settings(data_dir=req.data_dir):
        return _grid(req, cell, zarr)


def _grid(req: ExtractRequest, cell: str | float, zarr: bool) -> tuple[Path, int]:
    from aether.core.cells import grid_file
    from aether.core.cells import parse_cell as parse_spec
    from aether.embeddings import get_source

    spec = parse_spec(cell)
    if zarr and spec.kind != "square":
        from aether.errors import InputError

        raise InputError("--zarr needs square cells", "use e.g. --cell 100m with --zarr")
    _check_request(req)
    year = check_year(req.year)
    place, poi_spec, source_name, options = _resolve(req)
    if place is None:
        from aether.pois.load import load_pois

        place = _place_from_pois(req.city, load_pois(poi_spec, None, **req.poi_options))
    out = city_dir(req.data_dir, place.slug, year)
    source = get_source(source_name, workdir=out / ".work" / source_name, **options)
    cells = source.grid(place, year, cell)
    path = out / grid_file(spec)
    write_parquet(cells, path)
    if zarr:
        from aether.io.gridstore import write_zarr

        write_zarr(cells, path.with_suffix(".zarr"))
    return path, len(cells)
