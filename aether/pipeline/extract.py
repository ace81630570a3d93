"""The extract workflow: place → POIs → embedding source → tables (what `aether extract` calls).

Re-running with the same inputs is a no-op: the manifest records a hash of everything that
determines the output (the POI table's content, the dataset version the source reports —
tile names and index rows, or Earth Engine image ids and ``system:version`` —, radii, year,
source options without credentials, paths or pace) and the checksums of the outputs, which
are checked too; the same work asked for from another folder or by a run file is the same.
The manifest also records the place, source and tiles, so ``grid`` reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether._version import VERSION
from aether.embeddings.base import SourceRequest
from aether.errors import PlaceError, PoiError
from aether.io.store import (
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    CityStore,
    new_run_id,
    run_ledger,
)
from aether.io.tables import (
    config_hash,
    read_json,
    sha256_file,
    write_json,
    write_parquet,
)
from aether.pipeline.steps import step_fresh, step_record
from aether.places.place import Place, place_from_polygon, slugify
from aether.places.query import PlaceQuery
from aether.pois.load import PoiSpec
from aether.settings import DEFAULT_RADII, DEFAULT_YEAR, check_radii, check_year, use_settings
from aether.settings import tiles as default_tiles

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.core.cells import CellSpec

#: Source options that are secrets or endpoints: never part of the hash or the manifest.
PRIVATE_OPTIONS = frozenset({"ee_credentials", "ee_url"})
#: Source options that say how a run goes (pace, budget), not what it makes: never hashed.
RUN_OPTIONS = frozenset({"ee_concurrency", "ee_poll", "ee_backoff", "ee_export_wait",
                         "ee_max_eecu_hours", "ee_budget_file"})
#: Source options that are paths: the hash holds what they point to, not how they are spelt.
PATH_OPTIONS = frozenset({"tiles"})
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractRequest:
    """Everything `aether extract` was asked to do, typed: built once where the request is
    made (the command line, a run file, the Python API) and carried as is."""

    city: str | None
    data_dir: Path
    offline: bool = False  # the sample city, no network
    geocode: bool = True  # False: a POI file's place is the extent of its POIs
    pois: PoiSpec = field(default_factory=PoiSpec)
    source: SourceRequest | None = None  # None: cog offline, else ee (grid: the extract's)
    radii: Sequence[float] = DEFAULT_RADII
    year: int = DEFAULT_YEAR
    place: PlaceQuery = field(default_factory=PlaceQuery)
    force: bool = False

    @property
    def chosen_source(self) -> SourceRequest:
        """The source to use: as requested, else ``cog`` offline and ``ee`` online."""
        return self.source or SourceRequest.of(None, offline=self.offline)


@dataclass
class ExtractResult:
    """Where the tables are and what happened."""

    out_dir: Path
    place: Place
    n_pois: int
    n_rows: int
    up_to_date: bool
    seconds: float


@dataclass
class GridResult:
    """The grid table written, and what was reused from the city's manifest."""

    path: Path
    n_cells: int
    reused: str | None = None
    up_to_date: bool = False  # the same grid was there: nothing computed or written


def _resolve(req: ExtractRequest) -> tuple[Place | None, PoiSpec, SourceRequest]:
    """Place, POI source and embedding source of a request (the sample city's when asked)."""
    source = req.chosen_source
    if req.offline:
        from aether.sample.city import ensure_sample, sample_place

        if req.city and sample_place(req.city) is not None and req.pois.source is None:
            if "tiles" in source.settings:  # tiles the user named are read before the
                source.create().latest_year()  # sample is built: bad ones write nothing
            sample = ensure_sample(req.data_dir)
            if source.name == "cog" and "tiles" not in source.settings:
                source = source.replace(tiles=str(sample.tiles))
            return sample.place, replace(req.pois, source=f"pbf:{sample.pbf}"), source
        if req.pois.source is None:
            raise PlaceError(
                f"{req.city!r} is not an offline sample city",
                "use --city Helsinki with --offline, or give --pois FILE and --tiles DIR",
            )
        return None, req.pois, source
    given = req.place.given
    if req.city is None and not given and req.pois.source is None:
        raise PlaceError("no place given", "use --city NAME, --osm-id, --bbox or --boundary")
    pois = req.pois if req.pois.source else replace(req.pois, source="osm")
    if (req.city is None or not req.geocode) and not given:
        if not req.geocode and not req.pois.local:
            raise PlaceError("--no-geocode needs POIs from a file",
                             "give --pois FILE or --pois pbf:FILE, or drop --no-geocode")
        return None, pois, source
    try:
        place = req.place.resolve(req.city)
    except PlaceError as e:
        if not (req.pois.local and not given and isinstance(e.__cause__, OSError)):
            raise
        log.warning("%s; the place of %s is the extent of its POIs", e.message, req.city)
        place = None
    return place, pois, source


def _place_from_pois(name: str | None, pois: gpd.GeoDataFrame, poi_spec: str | None, *,
                     yes: bool = False) -> Place:
    """A place for user-supplied POIs: the hull of their points, named after the city, else
    after the file and its content (``shops-1a2b3c4d``: two files never share a folder).
    Above the area limit only with ``yes`` (``--yes``)."""
    hull = pois.geometry.union_all().convex_hull.buffer(1e-4)
    if name:
        return place_from_polygon(name, hull, slugify(name), yes=yes)
    stem = Path((poi_spec or "").split(":", 1)[-1]).stem or "pois"
    return place_from_polygon(stem, hull, f"{slugify(stem)[:70]}-{_pois_hash(pois)[:8]}",
                              yes=yes)


@dataclass
class Inputs:
    """A request's place and pois table, with the embedding source to use and its options."""

    place: Place
    pois: gpd.GeoDataFrame
    poi_spec: str
    source: SourceRequest


def request_inputs(req: ExtractRequest) -> Inputs:
    """Resolve the place and load the POIs of a request (what extract and ``aether.pois`` do)."""
    if req.city is not None:
        slugify(req.city)  # a name that cannot be a safe path fails before any work
    place, poi_spec, source = _resolve(req)
    pois = poi_spec.load(place)
    if len(pois) == 0:
        raise PoiError("no POIs found in the place", "check the place or the POI source")
    spec = str(poi_spec.source)
    return Inputs(place or _place_from_pois(req.city, pois, spec, yes=req.place.yes), pois,
                  spec, source)


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
    from aether.embeddings import write_point_means

    t0 = time.perf_counter()
    radii = check_radii(tuple(req.radii))
    year = check_year(req.year)
    inputs = request_inputs(req)
    place, pois, poi_spec = inputs.place, inputs.pois, inputs.poi_spec
    source = source_for(inputs.source)
    if source.name == "ee" and "ee_budget_file" not in source.settings:
        source = source.replace(ee_budget_file=run_ledger(req.data_dir,
                                                          new_run_id("extract-")))
    source_name, options = source.name, source.settings
    store = CityStore.of(req.data_dir, place.slug, year)
    out = store.dir
    made_by = source.create(store.work(source_name))
    config = {
        "place": place.slug,
        "pois": _pois_hash(pois),
        "source": source_name,
        "source_options": _hashed_options(options),
        "radii": list(radii),
        "year": year,
        # what the tables are made from: a new tile or image version redoes them
        "dataset": made_by.version(year, place.bbox),
    }
    chash = config_hash(config)
    with store.locked():
        if not req.force and _up_to_date(store, chash):
            return ExtractResult(out, place, len(pois), _rows(store), True,
                                 time.perf_counter() - t0)
        if req.force:  # recompute: no checkpoint or task of an earlier run is reused
            shutil.rmtree(store.work(source_name), ignore_errors=True)
        n_rows = write_point_means(made_by, pois, radii, year, store.poi_embeddings)
        write_parquet(pois, store.pois)
        if poi_spec.startswith("pbf:"):  # the maps' offline base layer
            from aether.pipeline.basemap import write_basemap

            write_basemap(poi_spec.split(":", 1)[1], place, store.basemap)
        write_json(_manifest(store, chash, config, req, poi_spec, source_name, options, place,
                             len(pois), n_rows, pois.attrs.get("snapshot")), store.manifest)
    return ExtractResult(out, place, len(pois), n_rows, False, time.perf_counter() - t0)


def _manifest(store: CityStore, chash: str, config: dict[str, Any], req: ExtractRequest,
              poi_spec: str, source_name: str, options: dict[str, Any], place: Place,
              n_pois: int, n_rows: int, pois_snapshot: dict[str, Any] | None
              ) -> dict[str, Any]:
    """What was made, from what: read back by ``_up_to_date`` and by later steps."""
    from aether.io.tiles import index_sha256

    tiles = options.get("tiles")
    return {
        "run_id": f"extract-{chash}",
        "aether_version": VERSION,
        "config": config,
        "config_hash": chash,
        "inputs": {"city": req.city, "pois": _poi_record(poi_spec),
                   # the OSM / Overture state the POIs are as of (None for a user's file)
                   "pois_snapshot": pois_snapshot,
                   "source": source_name, "tiles": None if tiles is None else str(tiles),
                   "tiles_index_sha256": None if tiles is None else index_sha256(tiles)},
        "versions": _versions(),
        "outputs": {
            name: {"rows": rows, "sha256": sha256_file(store.dir / name)}
            for name, rows in ((POIS_FILE, n_pois), (POI_EMBEDDINGS_FILE, n_rows))
        },
        "place": {"name": place.name, "crs": place.crs, "bbox": list(place.bbox),
                  "boundary_wkt": _wkt(place.boundary)},
    }


def _poi_record(poi_spec: str) -> str:
    """How the manifest names a POI source: ``osm``, or ``kind:`` and the file's name."""
    if ":" not in poi_spec:
        return poi_spec
    kind, path = poi_spec.split(":", 1)
    return f"{kind}:{Path(path).name}"


def _wkt(geom: Any) -> str:
    """Full-precision WKT: the place read back is the place that was used."""
    import shapely

    return str(shapely.to_wkt(geom, rounding_precision=-1))


def _hashed_options(options: dict[str, Any]) -> dict[str, str]:
    """The source options that decide what a table holds (not credentials, endpoints, how
    the work is run or where the tiles lie): what a config hash is made of."""
    return {k: str(v) for k, v in sorted(options.items())
            if k not in PRIVATE_OPTIONS | RUN_OPTIONS | PATH_OPTIONS and v is not None}


def source_for(source: SourceRequest) -> SourceRequest:
    """The source as it will read: ``cog`` without tiles reads the settings' tiles (named,
    so the hash says what is read), local tile paths made absolute (the manifest's record
    works from any folder)."""
    if source.name == "cog" and "tiles" not in source.settings:
        source = source.replace(tiles=default_tiles())
    tiles = source.settings.get("tiles")
    if tiles is None or "://" in str(tiles):
        return source
    return source.replace(tiles=str(Path(str(tiles)).expanduser().resolve()))


def _up_to_date(store: CityStore, chash: str) -> bool:
    """True when the manifest has this config hash and every output matches its checksum."""
    out, mpath = store.dir, store.manifest
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


def _rows(store: CityStore) -> int:
    return int(read_json(store.manifest)["outputs"][POI_EMBEDDINGS_FILE]["rows"])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "pandas", "rasterio", "dask", "earthengine-api", "osmnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def run_grid(req: ExtractRequest, cell: str | float | CellSpec = 100.0, *, zarr: bool = False
             ) -> GridResult:
    """Area-weighted cell means over the place: ``grid_embeddings_<cell>.parquet``.

    The place, source and tiles an earlier extract of the city recorded in its manifest
    are reused when the request does not give them (no geocoding again). With ``zarr``,
    square grids are also written as a (band, y, x) Zarr store of the same means next to
    it, for array tools (xarray, heat maps).
    """
    with use_settings(data_dir=req.data_dir):
        return _grid(req, cell, zarr)


def _grid(req: ExtractRequest, cell: str | float | CellSpec, zarr: bool) -> GridResult:
    from aether.core.cells import parse_cell

    spec = parse_cell(cell)
    if zarr and spec.kind != "square":
        from aether.errors import InputError

        raise InputError("--zarr needs square cells", "use e.g. --cell 100m with --zarr")
    if req.city is not None:
        slugify(req.city)  # a name that cannot be a safe path fails before any work
    year = check_year(req.year)
    reused = _from_manifest(req, year)
    if reused is not None:
        place, source, said = reused
    else:
        asked, poi_spec, source = _resolve(req)
        if asked is None:
            asked = _place_from_pois(req.city, poi_spec.load(None), poi_spec.source,
                                     yes=req.place.yes)
        place, said = asked, None
    store = CityStore.of(req.data_dir, place.slug, year)
    source = source_for(source)
    made_by = source.create(store.work(source.name))
    path = store.grid(spec)
    # what the grid is made from, as an extract's config hash: a grid of the same place,
    # source, options, cells and data is not computed and written again
    inputs = config_hash({"place": _wkt(place.boundary), "source": source.name,
                          "source_options": _hashed_options(source.settings),
                          "cell": spec.label, "year": year,
                          "dataset": made_by.version(year, place.bbox)})
    step = f"grid-{spec.label}"
    with store.locked():
        if (not req.force and step_fresh(store.dir, step, inputs)
                and (not zarr or path.with_suffix(".zarr").is_dir())):
            import pyarrow.parquet as pq

            return GridResult(path, pq.ParquetFile(path).metadata.num_rows, said,
                              up_to_date=True)
        cells = made_by.grid(place, year, spec.label)
        path = write_parquet(cells, path)
        if zarr:
            from aether.io.gridstore import write_zarr

            write_zarr(cells, path.with_suffix(".zarr"))
        step_record(store.dir, step, inputs, [path])
    return GridResult(path, len(cells), said)


def _from_manifest(req: ExtractRequest, year: int
                   ) -> tuple[Place, SourceRequest, str] | None:
    """(place, source, options, what was reused) from the city's manifest, when the request
    names a city that was extracted and gives no place of its own (and no POIs, or the ones
    that extract used: a run's grid step does not geocode again)."""
    if req.city is None or req.place.given:
        return None
    store = CityStore.of(req.data_dir, slugify(req.city), year)
    try:
        m = read_json(store.manifest)
        wkt, inputs = m["place"]["boundary_wkt"], m["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no manifest, or one older aether wrote without the place
    if req.pois.source is not None and _poi_record(req.pois.source) != inputs.get("pois"):
        return None
    import shapely

    place = Place(m["place"]["name"], store.slug, shapely.from_wkt(wkt), m["place"]["crs"])
    asked = req.source if req.source is not None and req.source.given else None
    options = req.source.settings if req.source is not None else {}
    said = [f"place {place.name}"]
    name = asked.name if asked else inputs.get("source") or "ee"
    if asked is None:
        said.append(f"source {name}")
    if "tiles" not in options and inputs.get("tiles") and name == inputs.get("source"):
        options["tiles"] = inputs["tiles"]
        said.append(f"tiles {inputs['tiles']}")
    return (place, SourceRequest.of(name, options),
            f"reused {', '.join(said)} from {store.manifest}")
