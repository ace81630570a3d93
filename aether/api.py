"""The Python API: what the CLI calls, and what a notebook calls.

Two kinds of functions. In memory, nothing written: ``pois`` (a place's POIs) and ``embed``
(AlphaEarth buffer means of any POIs), and ``Model.load(path).encode(frame)``. On the data
directory, as the CLI commands: ``extract``, ``grid``, ``train``, ``encode``, ``evaluate``,
``query``/``search``, ``demo``, ``sample``, ``run``. Every bad input is an ``AetherError``.

    >>> import aether
    >>> pois = aether.pois("Helsinki", offline=True)
    >>> emb = aether.embed(pois.head(10), source="cog", tiles="aether-data/_sample/helsinki/tiles")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.errors import InputError, TableError
from aether.settings import DEFAULT_RADII, DEFAULT_YEAR

if TYPE_CHECKING:
    import geopandas as gpd
    import numpy as np

    from aether.core.cells import CellSpec
    from aether.evaluation.tasks import ProbeTask
    from aether.ml.encode import EncodeResult, ModelRun
    from aether.pipeline.demo import DemoResult
    from aether.pipeline.extract import ExtractRequest, ExtractResult, GridResult
    from aether.pipeline.scheduled import RunReport
    from aether.places.query import PlaceQuery
    from aether.pois.load import PoiSpec
    from aether.query.search import CityIndex, QueryResult
    from aether.query.serve import CityApp
    from aether.query.webapp import ServedApp
    from aether.sample.city import SampleCity

PathLike = str | os.PathLike[str]


def _data(data_dir: PathLike | None) -> Path:
    from aether.settings import data_dir as resolve_data_dir

    return resolve_data_dir(data_dir)


def city_dir(city: str, year: int = DEFAULT_YEAR, data_dir: PathLike | None = None) -> Path:
    """``<data>/<slug>/<year>``: where a city-year's tables are."""
    from aether.io.store import CityStore
    from aether.places.place import slugify
    from aether.settings import check_year

    return CityStore.of(_data(data_dir), slugify(city), check_year(year)).dir


def _request(city: str | None, *, offline: bool, pois: str | PoiSpec | None,
             source: str | None, radii: Sequence[float], year: int,
             data_dir: PathLike | None, place: PlaceQuery | None,
             source_options: dict[str, Any], force: bool = False, geocode: bool = True
             ) -> ExtractRequest:
    """The typed request of the Python API's keyword arguments (checked here, once)."""
    from aether.embeddings.base import SourceRequest
    from aether.pipeline.extract import ExtractRequest
    from aether.places.query import PlaceQuery
    from aether.pois.load import PoiSpec

    given = {k: v for k, v in source_options.items() if v is not None}
    return ExtractRequest(
        city=city, data_dir=_data(data_dir), offline=offline, geocode=geocode,
        pois=pois if isinstance(pois, PoiSpec) else PoiSpec.of(pois),
        source=SourceRequest.of(source, given, offline=offline) if source or given else None,
        radii=tuple(radii), year=year, place=place or PlaceQuery(), force=force)


# -- in memory ------------------------------------------------------------------------------


def pois(
    place: str | None = None,
    *,
    source: str | None = None,
    offline: bool = False,
    bbox: str | Sequence[float] | None = None,
    boundary: PathLike | None = None,
    osm_id: str | None = None,
    which_result: int | None = None,
    name_column: str | None = None,
    category_column: str | None = None,
    top_category_column: str | None = None,
    data_dir: PathLike | None = None,
) -> gpd.GeoDataFrame:
    """A place's POIs as the ``pois`` table (points in EPSG:4326), in memory.

    Parameters
    ----------
    place
        A place name (geocoded), or None with ``bbox`` / ``boundary`` / a file source.
    source
        ``osm`` (Overpass; the default), ``overture[:RELEASE]``, ``pbf:PATH``, ``file:PATH``
        or a path.
    offline
        With an offline sample city's name: read its bundled OSM extract, no network.
    bbox, boundary, osm_id, which_result
        The area instead of (or to disambiguate) the name: ``W,S,E,N``, a polygon file, an
        OSM relation, the n-th geocoder result.
    name_column, category_column, top_category_column
        Which columns of a ``file:`` source hold the name and categories.

    Returns
    -------
    geopandas.GeoDataFrame
        ``poi_id``, ``name``, ``category``, ``top_category``, ``text``, ``source`` and point
        geometry; ``attrs["snapshot"]`` says how recent the OSM/Overture data is.
    """
    from aether.places.query import PlaceQuery
    from aether.pois.load import PoiSpec

    where = PlaceQuery.of(bbox=bbox, boundary=boundary, osm_id=osm_id,
                          which_result=which_result)
    spec = PoiSpec.of(source, name_column=name_column, category_column=category_column,
                      top_category_column=top_category_column)
    req = _request(place, offline=offline, pois=spec, source=None, radii=DEFAULT_RADII,
                   year=DEFAULT_YEAR, data_dir=data_dir, place=where, source_options={})
    from aether.pipeline.extract import request_inputs

    return request_inputs(req).pois


def _as_pois(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Points in EPSG:4326 with a string ``poi_id`` (the index when there is none)."""
    if "geometry" not in frame or frame.crs is None:
        raise InputError("embed needs a GeoDataFrame with a crs", "e.g. aether.pois(...)")
    if not (frame.geometry.geom_type == "Point").all():
        raise InputError("embed needs point geometries",
                         "use frame.representative_point() for polygons")
    out = frame.to_crs("EPSG:4326")
    if "poi_id" not in out:
        out = out.assign(poi_id=out.index.astype(str))
    if out["poi_id"].duplicated().any():
        raise InputError("poi_id values repeat", "give each POI its own poi_id")
    return out.assign(poi_id=out["poi_id"].astype(str))


def embed(
    pois: gpd.GeoDataFrame,
    source: str = "cog",
    *,
    radii: Sequence[float] = (100.0,),
    year: int = DEFAULT_YEAR,
    scheduler: str | None = None,
    **source_options: Any,
) -> gpd.GeoDataFrame:
    """AlphaEarth buffer means of POIs, in memory: one row per POI × radius.

    Nothing is written (the source's work files, if any, go to a temporary directory).

    Parameters
    ----------
    pois
        Points with a unique ``poi_id`` and a crs (e.g. from ``aether.pois``).
    source
        ``cog`` (the public COGs, or ``tiles=``), ``ee`` or ``xee`` (Earth Engine).
    radii
        Buffer radii in metres (or window names such as ``square:4``).
    year
        The AlphaEarth year.
    scheduler
        ``threads`` (default), ``cluster[:N]`` or a Dask scheduler address.
    **source_options
        The source's options: ``tiles=DIR_OR_URL`` for cog; ``ee_project=...`` for ee and xee.

    Returns
    -------
    geopandas.GeoDataFrame
        The POIs' own columns, then ``year``, ``radius_m``, ``A00``..``A63``, ``weight``,
        ``valid_fraction``, ``norm`` (the ``poi_embeddings`` contract); POIs outside coverage
        keep NaN vectors.
    """
    import geopandas as gpd

    from aether.embeddings.base import SourceRequest
    from aether.execution.cluster import dask_scheduler
    from aether.io.tables import sort_poi_embeddings
    from aether.settings import check_radii, check_year

    radii_t, year = check_radii(tuple(radii)), check_year(year)
    chosen = SourceRequest.of(source, source_options)
    points = _as_pois(pois)
    with tempfile.TemporaryDirectory(prefix="aether-embed-") as work, dask_scheduler(scheduler):
        src = chosen.create(Path(work))
        emb = sort_poi_embeddings(src.point_means(points, radii_t, year))
    keep = [c for c in points.columns if c not in emb.columns or c == "poi_id"]
    out = points[keep].merge(emb, on="poi_id", how="right")
    return gpd.GeoDataFrame(out, geometry=points.geometry.name, crs="EPSG:4326")


@dataclass(frozen=True)
class Model:
    """A trained AETHER run: encode AlphaEarth means or text into the 128-d aligned space."""

    run: ModelRun

    @classmethod
    def load(cls, path: PathLike) -> Model:
        """Load a run directory (``<city>/<year>/models/<run>``)."""
        from aether.io.store import MODELS_DIR
        from aether.ml.encode import load_run

        p = Path(path)
        # <city>/<year>/models/<run>: the city-year folder, whose runs a missing one names
        city = p.parent.parent if p.parent.name == MODELS_DIR else p.parent
        return cls(load_run(city, p, slug=None, year=None))

    @property
    def name(self) -> str:
        return self.run.name

    def __repr__(self) -> str:  # not the dataclass's: that would print the whole torch module
        text = self.run.text_model or "no text encoder"
        return (f"Model({self.name!r}: {self.run.out_dim}-d, base radius "
                f"{self.base_radius_m:g} m, text {text})")

    @property
    def base_radius_m(self) -> float:
        """The buffer radius the head was trained on (it is applied at that scale only)."""
        return self.run.base_radius_m

    def encode(self, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        """AETHER vectors ``E000``..``E127`` for ``embed`` rows or a grid table.

        ``embed``/``poi_embeddings`` rows: the rows at the model's base radius, encoded.
        ``grid_embeddings`` rows (``cell_id``, ``x``, ``y``): each cell's mean over a circle of
        the base radius around it, encoded. Masked inputs give NaN vectors.
        """
        import geopandas as gpd
        import numpy as np
        import pandas as pd

        from aether.core.aef import BANDS
        from aether.ml.encode import aether_frame, apply_ae, encode_grid

        if "radius_m" in frame:
            rows = frame[np.isclose(frame["radius_m"].astype(float), self.base_radius_m)]
            if rows.empty:
                raise TableError(f"no rows at the model's {self.base_radius_m:g} m radius",
                                 f"embed with radii=[{self.base_radius_m:g}]")
            rows = rows.reset_index(drop=True)
            z = apply_ae(self.run, rows[list(BANDS)].to_numpy())
            keys = [c for c in rows.columns if c not in BANDS and c not in ("weight", "norm")]
        elif {"cell_id", "x", "y"} <= set(frame.columns):
            rows = frame.reset_index(drop=True)
            z, means = encode_grid(self.run, rows)
            rows = rows.assign(valid_fraction=means.valid_fraction.astype(np.float32))
            keys = [c for c in rows.columns if c not in BANDS and c != "weight"]
        else:
            raise TableError("encode needs embed rows (radius_m) or a grid (cell_id, x, y)",
                             "pass aether.embed(...) output or a grid_embeddings table")
        out = pd.concat([rows[keys], aether_frame(z)], axis=1).assign(run=self.name)
        crs = getattr(frame, "crs", None)
        return gpd.GeoDataFrame(out, geometry="geometry", crs=crs) if "geometry" in out else out

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 128) vectors of texts, through the run's own text encoder and head."""
        from aether.ml.encode import apply_text
        from aether.query.search import check_queries

        return apply_text(self.run, check_queries(list(texts)))


# -- on the data directory (what the CLI commands do) -------------------------------------


def extract(
    city: str | None = None,
    *,
    offline: bool = False,
    pois: str | PoiSpec | None = None,
    source: str | None = None,
    radii: Sequence[float] = DEFAULT_RADII,
    year: int = DEFAULT_YEAR,
    data_dir: PathLike | None = None,
    place: PlaceQuery | None = None,
    force: bool = False,
    geocode: bool = True,
    scheduler: str | None = None,
    **source_options: Any,
) -> ExtractResult:
    """Write a city's ``pois`` and ``poi_embeddings`` tables (a no-op when up to date).

    Parameters
    ----------
    city
        The city's name (geocoded unless ``place`` says where it is).
    place
        ``PlaceQuery(bbox=..., boundary=..., osm_id=..., which_result=..., yes=...)``.
    pois
        ``osm``, ``overture[:RELEASE]``, ``pbf:PATH``, ``file:PATH``, a path, or a
        ``PoiSpec`` with a POI file's column names.
    source, source_options
        The embedding source (``cog``, ``ee``, ``xee``) and its options (``tiles=...``).
    geocode
        False: a POI file's place is the extent of its POIs (no Nominatim).

    Returns
    -------
    ExtractResult
        Where the tables are, their row counts, and whether they were up to date.
    """
    from aether.execution.cluster import dask_scheduler
    from aether.pipeline.extract import run_extract

    req = _request(city, offline=offline, pois=pois, source=source, radii=radii, year=year,
                   data_dir=data_dir, place=place, source_options=source_options,
                   force=force, geocode=geocode)
    with dask_scheduler(scheduler):
        return run_extract(req)


def grid(
    city: str | None = None,
    *,
    cell: str | float | CellSpec = "100m",
    offline: bool = False,
    pois: str | None = None,
    source: str | None = None,
    year: int = DEFAULT_YEAR,
    zarr: bool = False,
    data_dir: PathLike | None = None,
    scheduler: str | None = None,
    **source_options: Any,
) -> GridResult:
    """Write a city's ``grid_embeddings`` table of ``cell``; the place, source and tiles of
    the city's extract are reused when not given.

    Parameters
    ----------
    city
        The city's name, as extracted (or a place to resolve).
    cell
        ``100m``, ``0.5km``, ``h3:9``, or metres as a number.
    zarr
        Also write the grid as a Zarr store beside the table.
    source, pois, offline, scheduler, **source_options
        As for ``extract``, when the city's extract does not say.

    Returns
    -------
    GridResult
        Where the table is, how many cells, what was reused from the city's extract, and
        whether the same grid was already there.
    """
    from aether.execution.cluster import dask_scheduler
    from aether.pipeline.extract import run_grid

    req = _request(city, offline=offline, pois=pois, source=source, radii=DEFAULT_RADII,
                   year=year, data_dir=data_dir, place=None, source_options=source_options)
    with dask_scheduler(scheduler):
        return run_grid(req, cell, zarr=zarr)


def train(
    city: str | Sequence[str],
    *,
    preset: str = "default",
    year: int = DEFAULT_YEAR,
    run: str | None = None,
    epochs: int | None = None,
    seed: int = 42,
    device: str | None = None,
    threads: int | None = 1,
    checkpoint_every: int = 1,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data_dir: PathLike | None = None,
) -> Path:
    """Train (or resume) the AETHER heads on a city's tables; returns the run directory.

    Parameters
    ----------
    city
        The city's name, as extracted; or several names: the run trains on all their
        tables (same year) and lives in the first city's folder.
    preset
        ``paper`` (the method as published) or ``default``.
    run
        The run's name (default: the preset's).
    options
        Training options (``TrainConfig`` fields, e.g. ``same_place_m=20``).
    device, threads, checkpoint_every, overwrite, on_epoch
        How the run is carried out (``aether.ml.config.RunOptions``); none changes the
        weights.

    Returns
    -------
    Path
        The run directory, ``<data>/<city>/<year>/models/<run>``.
    """
    from aether.ml.config import RunOptions
    from aether.ml.train import train as _train

    how = RunOptions(device=device, threads=threads, checkpoint_every=checkpoint_every,
                     overwrite=overwrite, on_epoch=on_epoch)
    names = [city] if isinstance(city, str) else list(city)
    if not names:
        raise InputError("no city to train on", "name one: aether train --city NAME")
    home, *others = (city_dir(c, year, data_dir) for c in names)
    return _train(home, preset=preset, run_name=run, epochs=epochs, seed=seed, options=how,
                  also=others, **(options or {}))


def runs(city: str, models: Sequence[str | Path] | None = None, *, year: int = DEFAULT_YEAR,
         data_dir: PathLike | None = None, transfer: bool = False) -> list[ModelRun]:
    """The named runs of a city (or all of them), checked against its slug and year;
    ``transfer`` admits runs trained on other cities."""
    from aether.ml.encode import load_runs
    from aether.places.place import slugify

    return load_runs(city_dir(city, year, data_dir), [str(m) for m in models or []] or None,
                     slug=slugify(city), year=year, transfer=transfer)


def encode(city: str, models: Sequence[str | Path] | None = None, *,
           cells: Sequence[str | float] | None = None, pois_only: bool = False,
           year: int = DEFAULT_YEAR, data_dir: PathLike | None = None
           ) -> dict[str, EncodeResult]:
    """Write AETHER vectors of a city's POIs and grids, for each run.

    Parameters
    ----------
    city
        The city's name, as extracted.
    models
        Run names or folders (default: every trained run of the city).
    cells
        Grids to encode (``100m``, ``h3:9``; default: every grid the city has).
    pois_only
        Encode the POIs alone: no grid needed.

    Returns
    -------
    dict[str, EncodeResult]
        Per run: where its encoded POIs and grids were written.
    """
    from aether.ml.encode import encode_city

    where = city_dir(city, year, data_dir)
    return {r.name: encode_city(where, r, None if cells is None else list(cells),
                                pois_only=pois_only)
            for r in runs(city, models, year=year, data_dir=data_dir)}


def evaluate(city: str, task: str | Path | ProbeTask,
             models: Sequence[str | Path] | None = None, *, protocol: str = "default",
             seeds: int = 5, shuffle: bool = False, cell: str | None = None,
             train_seeds: int = 1, year: int = DEFAULT_YEAR,
             data_dir: PathLike | None = None, transfer: bool = False) -> dict[str, Any]:
    """Probe frozen embeddings on a downstream task; writes its report.

    Parameters
    ----------
    city
        The city's name, as extracted.
    task
        A task YAML file, a packaged task's name, or a ``ProbeTask``.
    models
        Run names or folders (default: every trained run of the city).
    protocol
        ``default``, ``cityrep`` (the CityRep benchmark's protocol) or ``spatial-blocks``.
    seeds
        Probe seeds (1 to 5).
    shuffle
        Train every probe on permuted labels (what chance scores).
    cell
        Replaces a grid task's cells (``100m``, ``h3:9``).
    train_seeds
        Above 1: train (when missing) that many seeds of each run's config and report each
        run as one row over all of them.
    transfer
        ``models`` may be runs of other cities (their folders): held-out-city transfer, so
        labelled.

    Returns
    -------
    dict
        The result: rows of method × probe × split with metrics (mean and spread), paired
        tests against raw AlphaEarth, provenance, and the report's ``paths``.
    """
    import dataclasses

    from aether.evaluation.evaluate import evaluate as _evaluate
    from aether.evaluation.probes import SEEDS
    from aether.evaluation.tasks import ProbeTask, load_task

    if not 1 <= seeds <= len(SEEDS):
        raise InputError(f"--seeds {seeds}", f"use 1 to {len(SEEDS)}")
    if isinstance(task, ProbeTask):
        spec = task if cell is None else dataclasses.replace(task, cell=cell)
    else:
        spec = load_task(task, cell=cell)
    if not 1 <= train_seeds <= 20:
        raise InputError(f"--train-seeds {train_seeds}", "use 1 to 20")
    where = city_dir(city, year, data_dir)
    found = runs(city, models, year=year, data_dir=data_dir, transfer=transfer)
    groups = None
    if train_seeds > 1:
        from aether.ml.encode import load_run
        from aether.ml.train import replicates
        from aether.places.place import slugify

        names = {r.name for r in found}
        firsts = [r for r in found if not _replicate_of(r.name, names)]
        # replicates train where their run lives (its home city), not where it is evaluated
        groups = [[load_run(where, p, slug=slugify(city), year=year, transfer=transfer)
                   for p in replicates(r.path.parent.parent, r.path, r.config, train_seeds)]
                  for r in firsts]
        found = [r for g in groups for r in g]
    return _evaluate(where, spec, found, protocol=protocol, seeds=SEEDS[:seeds],
                     shuffle=shuffle, replicates=groups)


def _replicate_of(name: str, names: set[str]) -> bool:
    """``name`` is ``<run>-seed<s>`` of a run among ``names`` (a replicate, not a row)."""
    import re

    m = re.fullmatch(r"(.+)-seed\d+", name)
    return bool(m and m.group(1) in names)


@dataclass(frozen=True)
class Search:
    """Answers over one run's encoded grid, or over a user's own vectors (``run`` None),
    with ``table()`` for one frame."""

    run: ModelRun | None
    index: CityIndex
    results: list[QueryResult]
    city_dir: Path | None

    @property
    def name(self) -> str:
        """What was searched: the run's name, or ``vectors`` for a user's own."""
        return self.run.name if self.run is not None else "vectors"

    def __repr__(self) -> str:  # the run holds a torch module: never print it
        queries = ", ".join(repr(r.query) for r in self.results[:3])
        more = f" and {len(self.results) - 3} more" if len(self.results) > 3 else ""
        what = f"model {self.name!r}" if self.run is not None else "your vectors"
        return (f"Search({what}, {len(self.index.grid):,} cells, "
                f"queries {queries}{more}; .table() for the answers)")

    def table(self) -> gpd.GeoDataFrame:
        """One row per query × rank: query, rank, score, cell_id, lon, lat, nearest_pois,
        model (and the file, ``source``, of a user's vectors), and the cell's geometry
        (EPSG:4326)."""
        import geopandas as gpd
        import pandas as pd

        cells = self.index.grid[["cell_id", "geometry"]]
        frames = [r.top.drop(columns=["x", "y"]).assign(query=r.query) for r in self.results]
        top = pd.concat(frames, ignore_index=True).merge(cells, on="cell_id", how="left")
        cols = ["query", "rank", "score", "cell_id", "lon", "lat", "nearest_pois",
                *(["source"] if "source" in top.columns else []), "geometry"]
        return gpd.GeoDataFrame(top[cols].assign(model=self.name), geometry="geometry",
                                crs=self.index.grid.crs)

    def maps(self, stem: PathLike | None = None, *, tiles: bool = True) -> tuple[Path, Path]:
        """The HTML and PNG maps of the answers (default ``<city>/maps/query``), each title
        saying a tiny spread and a generated raster when there is one."""
        from aether.io.store import CityStore
        from aether.provenance import is_synthetic
        from aether.query.maps import html_map, png_map, titled

        if stem is None and self.city_dir is None:
            raise InputError("a search of your own vectors has no city folder for its maps",
                             "give the maps a path: .maps('out/similar')")
        base = (Path(stem) if stem is not None
                else CityStore.at(Path(str(self.city_dir))).maps_dir / "query")
        synthetic = self.city_dir is not None and is_synthetic(self.city_dir)
        results = titled(self.results, synthetic=synthetic)
        return (html_map(self.index, results, base.with_suffix(".html"), tiles=tiles),
                png_map(self.index, results, base.with_suffix(".png")))


def _run_and_cell(city: str, model: str | None, cell: str | float | None, year: int,
                  data_dir: PathLike | None) -> tuple[ModelRun, CellSpec, Path]:
    """The run a question goes to (``default``, else the last run with an encoded grid, else
    the last run) and its grid cell (the smallest encoded, unless given: ``100m``, ``h3:9``)."""
    from aether.core.cells import parse_cell
    from aether.io.store import CityStore
    from aether.ml.encode import encoded_cells, list_runs

    where = city_dir(city, year, data_dir)
    names = list_runs(where)
    encoded = [n for n in names if encoded_cells(where, n)]
    chosen = model or ("default" if "default" in names else (encoded or names or ["default"])[-1])
    run = runs(city, [chosen], year=year, data_dir=data_dir)[0]
    cells = encoded_cells(where, run.name)
    if cell is None and not cells:
        encode = f"`aether encode --city {city} --model {run.name}`"
        grids = bool(CityStore.at(where).grids())
        raise TableError(f"model {run.name} has no encoded grid",
                         f"run {encode}" if grids else
                         f"run `aether grid --city {city}`, then {encode}")
    return run, cells[0] if cell is None else parse_cell(cell), where


def search(queries: Sequence[str], *, city: str | None = None, model: str | None = None,
           k: int = 10, cell: str | float | None = None, year: int = DEFAULT_YEAR,
           data_dir: PathLike | None = None, vectors: Sequence[PathLike] = ()) -> Search:
    """Text queries against a run's encoded grid, or against your own AlphaEarth means
    encoded by a run.

    Parameters
    ----------
    queries
        Natural-language queries (each under 500 characters).
    city
        The city's name, as extracted; or None with ``vectors``.
    model
        The run (default: ``default``, else the last run with an encoded grid); with
        ``vectors``, a run's directory (of any city), which is required.
    k
        Top cells per query.
    cell
        The grid (default: the smallest encoded one).
    vectors
        Files of your own AlphaEarth means per area (``query.own_vectors``: JSON of H3
        means, or (Geo)Parquet), encoded by ``model``'s image head as ``aether encode``
        encodes a grid, then searched instead of a city's grid.

    Returns
    -------
    Search
        Per query the scores of every cell and the top ``k`` with their nearest POIs (with
        ``vectors``: the file, ``source``, of each); ``.table()`` and ``.maps()``.
    """
    from aether.query.search import check_queries, query_city
    from aether.query.search import search as search_index

    texts = check_queries(list(queries))
    if vectors:
        from aether.query.own_vectors import encode_vectors, read_vectors

        if city is not None or cell is not None:
            raise InputError("--vectors searches your own vectors, not a city's grid",
                             "drop --city and --cell (give --model as a run directory), "
                             "or drop --vectors")
        if model is None:
            raise InputError("your vectors have no text space: words cannot be matched to "
                             "them without a trained model",
                             "give --model RUN_DIR to encode them with a run's image head, "
                             "or find places like a place with `aether similar --vectors`")
        own = _run_dir(model)
        index = encode_vectors(read_vectors(vectors), own)
        return Search(own, index, search_index(index, own, texts, k=k), None)
    if city is None:
        raise InputError("no city and no vectors to search",
                         "pass --city NAME, or --vectors FILE with --model RUN_DIR")
    run, cell_m, where = _run_and_cell(city, model, cell, year, data_dir)
    index, results = query_city(where, run, texts, cell=cell_m, k=k)
    return Search(run, index, results, where)


def _run_dir(model: PathLike) -> ModelRun:
    """A trained run given by its directory (of any city): what your own vectors are
    encoded with, where there is no city to name a run in."""
    from aether.errors import ModelError
    from aether.io.store import model_complete

    path = Path(model)
    if not path.is_dir() or not model_complete(path):
        raise ModelError(f"no trained run at {path}" if not path.is_dir() else
                         f"{path} holds no complete trained run",
                         "with --vectors, --model is a run's directory, e.g. "
                         "aether-data/helsinki/2024/models/default")
    return Model.load(path).run


def similar(*, city: str | None = None, at: Sequence[tuple[float, float]] = (),
            not_at: Sequence[tuple[float, float]] = (), pois: Sequence[str] = (),
            model: str | None = None, k: int = 10, cell: str | float | None = None,
            year: int = DEFAULT_YEAR, data_dir: PathLike | None = None,
            include_examples: bool = False, vectors: Sequence[PathLike] = ()) -> Search:
    """Grid cells most like example places and unlike others: cosine to
    ``2·mean(pos) − mean(neg)`` of the examples' unit vectors.

    Parameters
    ----------
    city
        The city's name, as extracted; or None with ``vectors``.
    at, not_at
        (lon, lat) of places to be like / unlike (the grid cells holding them).
    pois
        POI ids whose own AETHER vectors are examples too.
    include_examples
        Return the example cells themselves (trivially the most alike) as well.
    vectors
        Files of your own vectors per area (``query.own_vectors``: JSON of H3 means, or
        (Geo)Parquet), searched as given instead of a city's grid; with ``model`` (then a
        run's directory, of any city) searched in that run's space, each area's AlphaEarth
        mean encoded as ``aether encode`` encodes a grid.

    Returns
    -------
    Search
        One answer: the scores of every cell and the top ``k``.
    """
    from aether.query.search import load_index
    from aether.query.similar import poi_vectors
    from aether.query.similar import similar as _similar

    if vectors:
        from aether.query.own_vectors import encode_vectors, read_vectors

        if city is not None or pois or cell is not None:
            raise InputError("--vectors searches your own vectors, not a city's grid or POIs",
                             "drop --city, --cell and --poi, or drop --vectors")
        index = read_vectors(vectors)
        run = None
        if model is not None:  # alike in the run's space: your vectors through its head
            run = _run_dir(model)
            index = encode_vectors(index, run)
        res = _similar(index, at=at, not_at=not_at, k=k, include_examples=include_examples)
        return Search(run, index, [res], None)
    if city is None:
        raise InputError("no city and no vectors to search", "pass --city NAME or --vectors FILE")
    run, cell_m, where = _run_and_cell(city, model, cell, year, data_dir)
    index = load_index(where, run, cell_m)
    res = _similar(index, at=at, not_at=not_at, poi_vectors=poi_vectors(where, run, pois), k=k,
                   include_examples=include_examples)
    return Search(run, index, [res], where)


def serve(city: str | None = None, models: Sequence[str] | None = None, *, port: int = 0,
          height: int = 640, basemap: str | None = None, year: int = DEFAULT_YEAR,
          data_dir: PathLike | None = None, vectors: Sequence[PathLike] = ()) -> ServedApp:
    """``aether serve`` inside Python: the web app served on loopback from a background
    thread, shown in a notebook cell as an iframe.

    Parameters
    ----------
    city
        The city's name, as extracted; or None with ``vectors``.
    models
        Runs to show side by side (default: every run with an encoded grid); with
        ``vectors``, run directories (of any city), each a panel of your vectors encoded.
    port
        The loopback port (0: any free one).
    height
        The iframe's height in pixels.
    basemap
        ``city`` (its own OSM layers, offline; the default for a city), ``osm`` (online
        tiles) or ``none`` (the default for your own vectors).
    vectors
        Files of your own vectors per area (as ``similar``): a panel of them as given
        ("more like this"), and one per model encoded (words too).

    Returns
    -------
    ServedApp
        ``.url``; shown in a notebook as the app; ``.stop()`` ends it.
    """
    from aether.query.webapp import ServedApp

    return ServedApp(web_app(city, models, basemap=basemap, year=year, data_dir=data_dir,
                             vectors=vectors), port=port, height=height)


def web_app(city: str | None = None, models: Sequence[str] | None = None, *,
            basemap: str | None = None, year: int = DEFAULT_YEAR,
            data_dir: PathLike | None = None, workers: int | None = None, queue: int = 16,
            vectors: Sequence[PathLike] = ()) -> CityApp:
    """The state behind ``aether serve``: each run's encoded grid (the smallest cell all of
    them have) and raw AlphaEarth, loaded once; ``query.serve.create_app`` makes it ASGI.
    Without ``models``, every run that has an encoded grid (the others are named in the log).
    ``basemap``: the maps drawn on the city's own OSM layers (``city``, offline, the
    default), online OSM tiles (``osm``) or nothing (``none``). ``workers`` answers at a
    time (default: the CPUs) and ``queue`` waiting; more get a 503. With ``vectors``: your
    own vectors as given, and encoded by each run directory in ``models``
    (``query.serve.own_panels``); no city, no base map unless ``osm``."""
    import logging

    from aether.ml.encode import encoded_cells
    from aether.provenance import is_synthetic
    from aether.query.serve import CityApp, check_basemap, load_panels

    if vectors:
        return _own_app(vectors, models, city=city, basemap=basemap, workers=workers,
                        queue=queue)
    if city is None:
        raise InputError("no city and no vectors to serve",
                         "pass --city NAME, or --vectors FILE (with --model RUN_DIR for words)")
    basemap = check_basemap(basemap or "city")  # before minutes of loading

    where = city_dir(city, year, data_dir)
    chosen = runs(city, models, year=year, data_dir=data_dir)
    if not models:
        unencoded = [r.name for r in chosen if not encoded_cells(where, r.name)]
        if unencoded:
            logging.getLogger(__name__).info("not served (no encoded grid): %s",
                                             ", ".join(unencoded))
        chosen = [r for r in chosen if r.name not in unencoded] or chosen
    common = [c for c in encoded_cells(where, chosen[0].name)  # smallest cells first
              if all(c in encoded_cells(where, r.name) for r in chosen[1:])]
    if not common:
        raise TableError("the models share no encoded grid",
                         f"run `aether encode --city {city}` for each of them")
    return CityApp(city, load_panels(where, chosen, common[0]), basemap=basemap,
                   synthetic=is_synthetic(where), workers=workers, queue=queue)


def _own_app(vectors: Sequence[PathLike], models: Sequence[str] | None, *, city: str | None,
             basemap: str | None, workers: int | None, queue: int) -> CityApp:
    """The web app over a user's own vectors: a panel of them as given and one per run."""
    from aether.query.own_vectors import OWN, read_vectors
    from aether.query.serve import CityApp, check_basemap, own_panels

    if city is not None:
        raise InputError("--vectors serves your own vectors, not a city's grid",
                         "drop --city (give --model as a run directory), or drop --vectors")
    basemap = check_basemap(basemap or "none")
    if basemap == "city":
        raise InputError("your vectors have no city base map (no city's OSM layers)",
                         "use --basemap osm (online tiles) or --basemap none")
    runs = [_run_dir(m) for m in models or []]
    index = read_vectors(vectors)
    return CityApp(OWN, own_panels(index, runs), basemap=basemap, workers=workers,
                   queue=queue)


def query(queries: str | Sequence[str], *, city: str | None = None, model: str | None = None,
          k: int = 10, cell: str | float | None = None, year: int = DEFAULT_YEAR,
          data_dir: PathLike | None = None, vectors: Sequence[PathLike] = ()
          ) -> gpd.GeoDataFrame:
    """The top-k grid cells of each text query, as one frame (see ``Search.table``); with
    ``vectors`` (and ``model``, a run directory) over your own AlphaEarth means."""
    texts = [queries] if isinstance(queries, str) else list(queries)
    return search(texts, city=city, model=model, k=k, cell=cell, year=year,
                  data_dir=data_dir, vectors=vectors).table()


def demo(data_dir: PathLike | None = None, *, epochs: int | None = None, seeds: int = 5,
         say: Callable[[str], None] = lambda s: None) -> DemoResult:
    """The whole chain on the offline sample city."""
    from aether.pipeline.demo import run_demo

    if not 1 <= seeds <= 5:
        raise InputError(f"--seeds {seeds}", "use 1 to 5")
    return run_demo(_data(data_dir), epochs=epochs, seeds=seeds, say=say)


def build_sample(data_dir: PathLike | None = None, *, seed: int = 0,
           year: int = DEFAULT_YEAR) -> SampleCity:
    """Build (once) the offline sample city; returns where its tiles and PBF are."""
    from aether.sample.city import ensure_sample

    return ensure_sample(_data(data_dir), seed=seed, year=year)


def run(run_file: PathLike, data_dir: PathLike | None = None, *,
        say: Callable[[str], None] = lambda s: None, scheduler: str | None = None,
        max_eecu_hours: float | None = None) -> RunReport:
    """Do a run file's cities × years × steps once (see docs/scheduling.md).

    Parameters
    ----------
    scheduler
        ``threads`` (one city after another, here), ``cluster[:N]`` or a Dask scheduler's
        address: every (city, year, step) a task on its workers, cities in parallel
        [default: the run file's ``scheduler:``, else the ``dask_scheduler`` setting].
    max_eecu_hours
        The Earth Engine export tasks' budget for the whole run; what it stops is left for
        the next run (``RunReport.cities_left``) [default: the run file's ``ee:
        {max_eecu_hours}``, else none].

    Returns
    -------
    RunReport
        Each step's status, rows and time; also written to ``<data>/runs/<run_id>.json``.
    """
    from aether.pipeline.scheduled import execute

    return execute(run_file, data_dir, say=say,
                   scheduler=scheduler, max_eecu_hours=max_eecu_hours)
