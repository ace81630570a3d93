"""Earth Engine source: AlphaEarth buffer means computed server-side by ``reduceRegions``.

No raster is downloaded. POIs × radii become buffered features, cut into spatially compact
batches (one UTM zone each); every batch is one ``reduceRegions`` graph sent through
``ee.data.computeFeatures`` (paged), or — with ``export`` — one batch Export task whose
CSV is read back through fsspec. Batches run a few at a time on threads, each through
``aether.execution.jobs.resilient_call`` (backoff + jitter on 429/5xx/dropped connections, larger
``tileScale`` on memory errors, halved batches on timeouts and aggregation limits) and
each finished batch is a Parquet checkpoint in ``workdir``: a killed run resumes there.

What is asked of the server, and why: the image is the year's mosaic, its 64 bands plus a
``valid`` band (1 where the embedding has data, masked like it), reduced with the weighted
``Reducer.sum`` at 10 m in the batch's UTM crs. Earth Engine weights each pixel by the
fraction of it inside the buffer, so the sums are exactly the partial sums of
``aether.core.zonal``: mean = Σ w·v / Σ w, ``weight`` = Σ w (covered valid area in pixels),
``valid_fraction`` = weight / (window area / 100 m²), ``norm`` = |mean|. One pass, 65 numbers
per feature, and ``windows.finalize`` turns them into the contract columns, so this source
and the COG source cannot disagree on their definition. A square window (negative radius) is
a ``Geometry.Rectangle`` on the 10 m grid of the batch's UTM crs.

Credentials, the session and how EE errors are classified: ``embeddings.earthengine.session``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from aether.core import aef, windows, zonal
from aether.embeddings.earthengine import catalog
from aether.embeddings.earthengine.export import VALID_BAND, ExportTarget, TaskBook, parse_export
from aether.embeddings.earthengine.options import (
    DEFAULT_BATCH,
    DEFAULT_CONCURRENCY,
    DEFAULT_EXPORT_WAIT_S,
    DEFAULT_POLL_S,
    EeOptions,
)
from aether.embeddings.earthengine.session import (
    EESettings,
    ee_error,
    ensure,
    quota_exhausted,
    verdict,
)
from aether.errors import CoverageError, EarthEngineError, InputError
from aether.execution.budget import EecuBudget
from aether.execution.cluster import cluster_slots
from aether.execution.jobs import (
    Batch,
    CheckpointStore,
    RetryPolicy,
    Stats,
    Verdict,
    read_checkpoints,
    resilient_call,
    run_batches,
)
from aether.io.store import lease_check
from aether.io.tables import poi_embeddings_frame

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places.place import Place

log = logging.getLogger(__name__)

#: Rows per computeFeatures page.
PAGE_SIZE = 1000
SCALE_M = 10.0
#: Times a FAILED export of one batch is started again before giving up.
EXPORT_RESTARTS = 3

@dataclass(frozen=True)
class Feature:
    """One buffered POI: what a batch carries."""

    poi_id: str
    radius: float
    lon: float
    lat: float


@dataclass
class EarthEngineSource:
    """Buffer means through Earth Engine (the real service or any endpoint that speaks it)."""

    workdir: Path
    ee_url: str | None = None
    ee_project: str | None = None
    ee_credentials: Path | None = field(default=None, repr=False)
    export: str | None = None
    export_read: str | None = None
    batch_size: int = DEFAULT_BATCH
    concurrency: int = DEFAULT_CONCURRENCY
    poll_s: float = DEFAULT_POLL_S
    #: How long a SUCCEEDED task's file may take to appear where it is read (Drive syncs).
    export_wait_s: float = DEFAULT_EXPORT_WAIT_S
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    name: str = "ee"
    stats: Stats = field(default_factory=Stats)
    #: One lease per request in flight: cluster-wide per Cloud project on a Dask worker
    #: (``execution.cluster.cluster_slots``), a no-op elsewhere.
    slot: Callable[[], Any] = field(default=contextlib.nullcontext, repr=False)
    #: What the run's export tasks may spend, and where every process of the run counts it.
    budget: EecuBudget = field(default_factory=lambda: EecuBudget(None), repr=False)
    #: Raises once the run that lent a Dask task its lock has ended (``io.store.lease_check``).
    lease: Callable[[], None] = field(default=lambda: None, repr=False)
    #: Per zone crs, the ``crsTransform`` its images need (None: crs + scale), checked once.
    _grids: dict[str, list[float] | None] = field(default_factory=dict, init=False, repr=False)

    # --- session -----------------------------------------------------------------------

    def _initialize(self) -> None:
        """``ee.Initialize`` against the endpoint unless this process already is (the
        dataset version and the batches of one extract share one session), with typed
        errors for every failure."""
        ensure(self.session, self.policy, self.stats)

    @property
    def session(self) -> EESettings:
        """The picklable session settings (what Dask workers initialise from)."""
        return EESettings(self.ee_url, self.ee_project,
                          str(self.ee_credentials) if self.ee_credentials else None)

    # --- the protocol --------------------------------------------------------------------

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the poi_embeddings contract for every POI × radius (see module doc)."""
        radii = [float(r) for r in radii]
        export = parse_export(self.export, self.export_read) if self.export else None
        batches = make_batches(pois, radii, year, self.batch_size)
        store = CheckpointStore(self.workdir / "batches")
        _drop_stale(store, {b.key for b in batches})
        if any(not store.has(b.key) for b in batches):
            from aether._compat import ee_retries_off
            from aether.execution.progress import bar

            self.budget.check(new_task=False)  # a run EE's quota stopped asks nothing more
            self._initialize()
            todo = [b for b in batches if not store.has(b.key)]
            # EE's own retries off: ours are counted, bounded, with jitter
            with ee_retries_off(), bar("Earth Engine: buffers",
                                       sum(len(b.items) for b in todo)) as shown:
                self._check_coverage(pois, year)
                self._check_grids(todo, year)
                if export is not None:
                    paths = self._run_exports(batches, store, export, year,
                                              on_done=lambda b: shown.advance(len(b.items)))
                else:
                    paths = run_batches(batches, lambda b: self._compute(b, year), store,
                                        concurrency=self.concurrency, stats=self.stats,
                                        on_done=lambda b: shown.advance(len(b.items)))
        else:
            paths = [store.path(b.key) for b in batches]
        return read_checkpoints(paths)

    def latest_year(self) -> int | None:
        """The newest year the collection holds (one request)."""
        self._initialize()
        return catalog.year_of(self._call(lambda: catalog.newest_start().getInfo()))

    def version(self, year: int, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
        """The images (ids and ``system:version``) the year's tables over bbox come from."""
        self.budget.check(new_task=False)
        self._initialize()
        expr = catalog.images_over(year, bbox)
        return catalog.version_record(self._call(lambda: expr.getInfo()))

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Grid cells are pixel work: the same session's pixels through xee, reduced locally
        (one computePixels request per chunk of every band instead of a reduceRegions
        feature per cell); see ``aether.embeddings.xee``."""
        from aether.embeddings.xee import XeeSource

        return XeeSource(self.session).grid(place, year, cell)

    def _check_coverage(self, pois: gpd.GeoDataFrame, year: int) -> None:
        """One request: the years of the images over the POIs (unknown year, no coverage)."""
        import ee

        w, s, e, n = (float(v) for v in pois.total_bounds)
        region = ee.Geometry.Rectangle([w, s, e, n])
        ic = ee.ImageCollection(aef.COLLECTION_ID).filterBounds(region)
        expr = ic.reduceColumns(ee.Reducer.toList(), ["system:time_start"]).get("list")
        starts = self._call(lambda: expr.getInfo())
        years = sorted({time.gmtime(int(t) / 1000).tm_year for t in starts or []})
        if not years:
            raise CoverageError(
                f"no AlphaEarth images cover {w:.4f},{s:.4f},{e:.4f},{n:.4f}",
                "the place is outside the dataset's coverage; check the place or the endpoint",
            )
        if year not in years:
            raise CoverageError(f"no AlphaEarth images for year {year} over this place",
                                f"years available: {', '.join(map(str, years))}")

    def _check_grids(self, batches: Sequence[Batch[Feature]], year: int) -> None:
        """One request per zone (and source): the grid the zone's images lie on, so a
        reduction runs on it rather than on an assumed one (``catalog.reduction_grid``)."""
        for b in batches:
            crs = _zone_crs(b.items)
            if crs not in self._grids:
                expr = catalog.projection_at(year, b.items[0].lon, b.items[0].lat)
                self._grids[crs] = catalog.reduction_grid(self._call(expr.getInfo), crs)

    def _call(self, fn: Any) -> Any:
        """A single request with the same retry policy as the batches."""
        out: list[Any] = []

        def attempt(_items: Sequence[Any], _level: int) -> pd.DataFrame:
            out.append(fn())
            return pd.DataFrame()

        try:
            resilient_call(attempt, [None], verdict, self.policy, stats=self.stats)
        except Exception as e:
            raise self._typed(e) from None
        return out[-1]

    def _typed(self, e: Exception) -> Exception:
        """The typed error of a failed request; Earth Engine's own quota exhausted also
        stops every other task of the run (through the budget's ledger)."""
        if quota_exhausted(e):
            return self.budget.halt(str(e).strip().split("\n")[0])
        return ee_error(e)

    # --- interactive batches (computeFeatures) --------------------------------------------

    def _compute(self, batch: Batch[Feature], year: int) -> pd.DataFrame:
        def attempt(items: Sequence[Feature], level: int) -> pd.DataFrame:
            return _rows_from_features(self._fetch(items, year, 2**level), items, year)

        self.budget.check(new_task=False)  # EE's quota may have run out for another city
        try:
            return resilient_call(attempt, batch.items, verdict, self.policy, stats=self.stats)
        except Exception as e:
            raise self._typed(e) from None

    def _fetch(self, items: Sequence[Feature], year: int, tile_scale: int) -> list[dict]:
        """All pages of one reduceRegions request."""
        import ee

        expr = reduce_regions_graph(items, year, tile_scale, self._grids.get(_zone_crs(items)))
        params: dict[str, Any] = {"expression": expr, "pageSize": PAGE_SIZE}
        features: list[dict] = []
        while True:
            with self.slot():
                page = ee.data.computeFeatures(params)
            features.extend(page.get("features") or [])
            token = page.get("nextPageToken") or page.get("next_page_token")
            if not token:
                return features
            params = {**params, "pageToken": token}

    # --- batch Export tasks ----------------------------------------------------------------

    def _run_exports(
        self, batches: Sequence[Batch[Feature]], store: CheckpointStore,
        export: ExportTarget, year: int,
        on_done: Callable[[Batch[Feature]], None] | None = None,
    ) -> list[Path]:
        """Start (or adopt) one task per batch, wait for it and read its table back, at most
        ``concurrency`` tasks in flight (cluster-wide on a Dask worker: ``slot``)."""
        export.check_writable()
        tasks = TaskBook(self.workdir / "export_tasks.json")
        return run_batches(batches, lambda b: self._await_export(b, tasks, export, year),
                           store, concurrency=self.concurrency, stats=self.stats, on_done=on_done)

    def _restart(self, batch: Batch[Feature], tasks: TaskBook, export: ExportTarget,
                 year: int, msg: str) -> str:
        """Start a FAILED batch's task again: at twice the ``tileScale`` when EE ran out of
        memory (the same graph would fail the same way), else as it was, a few times."""
        import ee

        rec = tasks.get(batch.key) or {}
        scale = int(rec.get("tile_scale", 1))
        if (verdict(ee.EEException(msg)) is Verdict.ESCALATE
                and scale < 2**self.policy.max_level):
            log.info("export of batch %s ran out of memory: tileScale %d", batch.key, 2 * scale)
            self.stats.bump("escalations")
            return self._ensure_task(batch, tasks, export, year, restart=True,
                                     tile_scale=2 * scale)
        if rec.get("restarts", 0) >= EXPORT_RESTARTS:
            raise EarthEngineError(f"export task for batch {batch.key} failed: {msg}",
                                   "see the task in the Earth Engine console")
        return self._ensure_task(batch, tasks, export, year, restart=True, tile_scale=scale)

    def _ensure_task(
        self, batch: Batch[Feature], tasks: TaskBook, export: ExportTarget, year: int,
        restart: bool = False, tile_scale: int = 1,
    ) -> str:
        """The operation name of the batch's task, starting it only if no task exists.

        The start's request id is recorded before it is sent, so after a crash the same id
        is sent again. What Earth Engine answers to a repeated id is not documented, so any
        error then is settled by looking the task up by its description (which carries the
        id) in ``ee.data.listOperations()``; only if none exists is a fresh task started.
        """
        import ee

        rec = tasks.get(batch.key)
        if rec and rec.get("operation") and not restart:
            return str(rec["operation"])
        resent = rec is not None and not restart
        if rec is None or restart:
            self.lease()  # never a new task for a run that has ended
            restarts = (rec or {}).get("restarts", -1) + 1
            if rec is not None and tile_scale != rec.get("tile_scale", 1):
                restarts = rec.get("restarts", 0)  # a new tileScale is not another try
            rec = self._new_task(batch, tasks, export, restarts, tile_scale)
        config = export.task_config(
            reduce_regions_graph(batch.items, year, int(rec.get("tile_scale", 1)),
                                 self._grids.get(_zone_crs(batch.items))),
            rec["description"], rec["prefix"])
        try:
            op = self._call(lambda: ee.data.exportTable(rec["request_id"], config))
        except Exception:
            found = self._find_task(rec["description"])
            if found is None and not resent:
                raise
            if found is None:  # the recorded start never reached the server: start afresh
                return self._ensure_task(batch, tasks, export, year, restart=True,
                                         tile_scale=int(rec.get("tile_scale", 1)))
            op = found
            log.info("export of batch %s: adopted task %s", batch.key, op["name"])
        name = str(op["name"])
        tasks.put(batch.key, {**rec, "operation": name})
        return name

    def _new_task(self, batch: Batch[Feature], tasks: TaskBook, export: ExportTarget,
                  restarts: int, tile_scale: int) -> dict[str, Any]:
        """A task record (request id, description, prefix, tileScale), written before the
        start."""
        import ee

        rid = ee.data.newTaskId()[0]
        rec = {"request_id": rid, "description": f"aether_{batch.key}_{rid}",
               "prefix": export.prefix_for(batch.key), "restarts": restarts,
               "tile_scale": tile_scale}
        tasks.put(batch.key, rec)
        return rec

    def _find_task(self, description: str) -> dict[str, Any] | None:
        """The newest operation whose metadata carries ``description`` (None: no such task)."""
        import ee

        ops = self._call(lambda: ee.data.listOperations())
        mine = [op for op in ops or []
                if (op.get("metadata") or {}).get("description") == description]
        mine.sort(key=lambda op: str((op.get("metadata") or {}).get("createTime", "")))
        return mine[-1] if mine else None

    def _await_export(
        self, batch: Batch[Feature], tasks: TaskBook, export: ExportTarget, year: int
    ) -> pd.DataFrame:

        with self.slot():
            if not (tasks.get(batch.key) or {}).get("operation"):
                self.budget.check()  # a new task: only within the budget
            name = self._ensure_task(batch, tasks, export, year)
            op = self._wait(batch, name, tasks, export, year)
        eecu = (op.get("metadata") or {}).get("batchEecuUsageSeconds")
        self.budget.charge(str(op["name"]), None if eecu is None else float(eecu))
        tasks.put(batch.key, {**(tasks.get(batch.key) or {}), "eecu_s": eecu})
        table = export.read(tasks.get(batch.key)["prefix"],  # type: ignore[index]
                            self.export_wait_s)
        return _rows_from_table(table, batch.items, year)

    def _wait(self, batch: Batch[Feature], name: str, tasks: TaskBook, export: ExportTarget,
              year: int) -> dict[str, Any]:
        """Poll the batch's task until it SUCCEEDED (restarting a FAILED one); the operation."""
        import ee

        polls = 0
        while True:
            op = self._call(lambda n=name: ee.data.getOperation(n))
            state = (op.get("metadata") or {}).get("state", "")
            if state == "SUCCEEDED":
                return cast(dict[str, Any], op)
            if state == "CANCELLED":  # someone stopped it on purpose: report, never restart
                raise EarthEngineError(
                    f"export task {name} for batch {batch.key} was cancelled",
                    f"remove its entry from {tasks.path} to start it again, or drop --export")
            if op.get("done") or state == "FAILED":
                msg = (op.get("error") or {}).get("message", state.lower() or "failed")
                name = self._restart(batch, tasks, export, year, msg)
                continue
            time.sleep(min(self.poll_s, 0.2 * 1.5**polls))  # quick tasks are seen quickly
            polls += 1


# --- the graph ---------------------------------------------------------------------------

#: Largest relative area EE's buffer polygon may lack against the true circle.
BUFFER_AREA_TOLERANCE = 1e-3


def buffer_max_error(radius: float, tolerance: float = BUFFER_AREA_TOLERANCE) -> float:
    """The ``maxError`` (m) for ``Geometry.buffer`` whose polygon keeps the circle's area to
    within ``tolerance``.

    EE approximates the circle by an inscribed polygon whose edges stray at most ``maxError``
    from it (the default, 1% of r, loses ~1.3% of the area). A regular inscribed n-gon lacks
    the fraction 1 − sin(2π/n)/(2π/n) of the area and strays r·(1 − cos(π/n)) from the
    circle; both shrink as n grows. So take the smallest n whose area deficit is within
    ``tolerance`` and return that n-gon's stray: any polygon held to it has at least n
    vertices and hence a deficit ≤ ``tolerance`` (≈ 0.73e-3·r for 1e-3).
    """
    n = 3
    while 1 - np.sin(2 * np.pi / n) / (2 * np.pi / n) > tolerance:
        n += 1
    return float(radius * (1 - np.cos(np.pi / n)))


def reduce_regions_graph(items: Sequence[Feature], year: int, tile_scale: int = 1,
                         grid: list[float] | None = None) -> Any:
    """The ``reduceRegions`` expression of one batch (all features in one UTM zone).

    Buffers are drawn in the batch's UTM projection with ``buffer_max_error``: the local
    circle the COG source integrates over, not EE's default geodesic 1%-error polygon. The
    reduction runs on ``grid`` (a ``crsTransform``, when the zone's images lie on their own
    grid: ``catalog.reduction_grid``), else on ``crs`` + 10 m.
    """
    import ee

    crs = _zone_crs(items)
    proj = ee.Projection(crs)
    fc = ee.FeatureCollection([
        ee.Feature(_region(f, crs, proj, grid), {"poi_id": f.poi_id, "radius_m": f.radius})
        for f in items
    ])
    image = (
        ee.ImageCollection(aef.COLLECTION_ID)
        .filterDate(f"{year}-01-01", f"{year + 1}-01-01")
        .filterBounds(ee.Geometry.Rectangle(list(_bounds(items))))
        .mosaic()
        .select(list(aef.BANDS))
    )
    valid = ee.Image.constant(1).updateMask(image.select(aef.BANDS[0]).mask())
    image = image.addBands(valid.rename(VALID_BAND))
    on = {"crsTransform": grid} if grid else {"scale": SCALE_M}
    sums = image.reduceRegions(collection=fc, reducer=ee.Reducer.sum(), crs=crs,
                               tileScale=tile_scale, **on)
    # properties only: the buffer polygons would be most of the answer's bytes
    return sums.map(lambda f: ee.Feature(None, f.toDictionary()))


def _zone_crs(items: Sequence[Feature]) -> str:
    """The UTM crs a batch is reduced in (``make_batches`` keeps a batch in one zone)."""
    return f"EPSG:{aef.utm_epsg(items[0].lon, items[0].lat)}"


def _region(f: Feature, crs: str, proj: Any, grid: list[float] | None = None) -> Any:
    """A circle buffer, or a square pixel window as a ``Rectangle`` on the pixel grid the
    batch is reduced on (``grid``, else the 10 m grid of its UTM crs), see
    ``aether.core.windows``."""
    import ee

    if not windows.is_square(f.radius):
        return ee.Geometry.Point([f.lon, f.lat]).buffer(
            f.radius, maxError=buffer_max_error(f.radius), proj=proj)
    from pyproj import Transformer

    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(f.lon, f.lat)
    x0, y0 = (grid[2], grid[5]) if grid else (0.0, 0.0)
    box = windows.snapped_squares(np.array([x]), np.array([y]), -f.radius, x0, y0, SCALE_M,
                                    -SCALE_M)
    return ee.Geometry.Rectangle([float(v) for v in box[0]], proj=crs, geodesic=False)


def _bounds(items: Sequence[Feature]) -> tuple[float, float, float, float]:
    """Lon/lat box around a batch's buffers (client-side: no union of circles to compute)."""
    lon = np.array([f.lon for f in items])
    lat = np.array([f.lat for f in items])
    r = max(windows.reach(f.radius) for f in items)
    dlat = r / 111_000.0 * 1.1
    dlon = dlat / max(np.cos(np.radians(np.abs(lat).max())), 0.01)
    return (float(lon.min() - dlon), float(lat.min() - dlat),
            float(lon.max() + dlon), float(lat.max() + dlat))


def make_batches(
    pois: gpd.GeoDataFrame, radii: Sequence[float], year: int, size: int
) -> list[Batch[Feature]]:
    """Spatially compact batches of buffered POIs, one UTM zone each, with stable keys.

    Keys hash the batch's content (ids, coordinates, radii, year), so a checkpoint can only
    ever be re-used for exactly the work it holds.
    """
    if size < 1:
        raise InputError(f"batch size {size} must be at least 1", "use e.g. --ee-batch 500")
    lon = pois.geometry.x.to_numpy(dtype=np.float64)
    lat = pois.geometry.y.to_numpy(dtype=np.float64)
    ids = pois["poi_id"].astype(str).to_numpy()
    zone = np.array([aef.utm_epsg(a, b) for a, b in zip(lon, lat, strict=True)])
    # Morton order on a ~1 km lattice keeps each batch's region small
    cell = _morton(np.floor((lon + 180) * 100).astype(np.int64),
                   np.floor((lat + 90) * 100).astype(np.int64))
    order = np.lexsort((ids, cell, zone))
    batches: list[Batch[Feature]] = []
    for z in np.unique(zone):
        sel = order[zone[order] == z]
        feats = [Feature(str(ids[i]), r, float(lon[i]), float(lat[i])) for i in sel for r in radii]
        for start in range(0, len(feats), size):
            chunk = feats[start:start + size]
            h = hashlib.sha256(json.dumps([year, [(f.poi_id, f.radius, f.lon, f.lat)
                                                  for f in chunk]]).encode()).hexdigest()[:12]
            batches.append(Batch(f"{len(batches):05d}-{h}", chunk))
    return batches


def _morton(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    for bit in range(20):
        out |= ((x >> bit) & 1) << (2 * bit) | ((y >> bit) & 1) << (2 * bit + 1)
    return out


# --- results ---------------------------------------------------------------------------

def _rows_from_features(
    features: list[dict], items: Sequence[Feature], year: int
) -> pd.DataFrame:
    props = [f.get("properties") or {} for f in features]
    return _rows_from_table(pd.DataFrame(props), items, year)


def _rows_from_table(table: pd.DataFrame, items: Sequence[Feature], year: int) -> pd.DataFrame:
    """Contract rows for ``items`` from per-feature sums (one row per poi × radius)."""
    cols = [*aef.BANDS, VALID_BAND]
    want = pd.DataFrame({"poi_id": [f.poi_id for f in items],
                         "radius_m": [float(f.radius) for f in items]})
    if len(table) != len(items):
        raise EarthEngineError(f"the server returned {len(table)} features for {len(items)}",
                               "re-run the extraction; completed batches are kept")
    table = table.assign(poi_id=table["poi_id"].astype(str),
                         radius_m=table["radius_m"].astype(float))
    for c in cols:  # no valid pixel: EE leaves the sums out or null
        table[c] = pd.to_numeric(table[c], errors="coerce") if c in table else np.nan
    got = want.merge(table[["poi_id", "radius_m", *cols]], on=["poi_id", "radius_m"],
                     how="left", validate="one_to_one")
    frames = []
    for r, part in got.groupby("radius_m", sort=True):
        sums = part[list(aef.BANDS)].to_numpy(dtype=np.float64)
        vw = np.nan_to_num(part[VALID_BAND].to_numpy(dtype=np.float64))
        m = windows.finalize(zonal.Partial(np.nan_to_num(sums), vw, aef.N_BANDS), float(r),
                             SCALE_M * SCALE_M)
        frames.append(poi_embeddings_frame(part["poi_id"].tolist(), year, float(r), m.mean,
                                           m.weight, m.valid_fraction, m.norm))
    return pd.concat(frames, ignore_index=True)


def _drop_stale(store: CheckpointStore, keys: set[str]) -> None:
    """Remove checkpoints of other inputs, so the workdir only holds this run's work."""
    if store.directory.is_dir():
        for p in store.directory.glob("*.parquet"):
            if p.stem not in keys:
                p.unlink()


def create(options: EeOptions, workdir: Path | None = None) -> EarthEngineSource:
    """The factory ``get_source('ee', ...)`` calls; its batches are checkpointed in workdir."""
    if workdir is None:
        raise InputError("the ee source needs a work directory for its checkpoints",
                         "pass workdir=PATH")
    o = options
    policy = RetryPolicy(base_s=o.ee_backoff) if o.ee_backoff is not None else RetryPolicy()
    src = EarthEngineSource(
        workdir=workdir, ee_url=o.ee_url, ee_project=o.ee_project,
        ee_credentials=o.ee_credentials, export=o.export, export_read=o.export_read,
        batch_size=o.ee_batch, concurrency=o.ee_concurrency, poll_s=o.ee_poll, policy=policy,
        export_wait_s=o.ee_export_wait,
        slot=cluster_slots(f"aether-ee-{o.ee_project or 'default'}", o.ee_concurrency),
        lease=lease_check(),
        budget=EecuBudget(o.ee_budget_file,
                          None if o.ee_max_eecu_hours is None else o.ee_max_eecu_hours * 3600),
    )
    if o.export:
        parse_export(o.export, o.export_read)  # a bad destination fails before any work
    return src
