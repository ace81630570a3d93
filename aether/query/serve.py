"""``aether serve``: ask a city anything in the browser.

A small ASGI app (FastAPI, served by uvicorn) over a city's encoded grid: the grid's vectors are
held in memory as float32, queries are encoded server-side by each model's own text encoder
and heads, and the page (Leaflet from the package, no CDN) draws one heat map per model side
by side. Raw AlphaEarth (the grid's own 64-d means) is a panel too: it has no text space, so it
answers "more like this" only, which is exactly what shows what the alignment adds.

A user's own vectors (``--vectors``) are served the same way, with no city: a panel of them
as given ("more like this") and one per trained run, the vectors encoded by its image head
(``own_panels``), so words work there.

This module is the state: panels whose query-independent parts (unit vectors, centres, POI
tree, heat raster) are built once at load, so an answer is one matrix-vector product, a
partial sort and a gather (``heat``); and the ``Gate`` that bounds the work in flight. The
HTTP side is ``webapp``. It binds 127.0.0.1 and refuses any Host header but the loopback
names unless ``--host`` was given, so a web page the user visits cannot reach it through DNS
rebinding; ``webapp`` also refuses cross-site calls of the API.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from aether.errors import BusyError, InputError
from aether.provenance import run_is_synthetic
from aether.query.heat import LEVELS, NODATA, HeatRaster, heat_raster
from aether.query.labels import Labels
from aether.query.search import CityIndex, QueryResult, check_queries, ranked, spread_note, top_rows
from aether.query.similar import VectorIndex, example_vector

if TYPE_CHECKING:
    from aether.core.cells import CellSpec
    from aether.ml.encode import ModelRun

T = TypeVar("T")
log = logging.getLogger(__name__)

RAW = "alphaearth"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
#: What the maps are drawn on: the city's own OSM layers (offline), online OSM tiles, nothing.
BASEMAPS = ("city", "osm", "none")
MAX_K = 200
#: The labels' classifier: L2 strength (sklearn's C) and its bound on solver iterations.
CLASSIFIER_C = 1.0
CLASSIFIER_ITER = 200
#: Rows per step when the grid's mean and sd are made.
SCALE_CHUNK = 65_536
#: Seconds a refused client is told to wait before asking again.
RETRY_AFTER_S = 1


@dataclass
class Panel:
    """One model's view of the city: its grid index, its vectors, (for text) its run, and
    the raster its heat layer is drawn on."""

    name: str
    index: CityIndex
    vectors: VectorIndex
    run: ModelRun | None  # None: raw AlphaEarth, no text space
    heat: HeatRaster

    def __repr__(self) -> str:  # not the dataclass's: grids, vectors and a torch module
        return f"Panel({self.name!r}: {self.about}; {len(self.index.grid):,} cells)"

    @cached_property
    def scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of each dimension of the unit vectors over the covered cells, what
        the classifier standardises by: made once, in chunks (no float64 copy of the grid)."""
        unit = self.vectors.unit
        total, squares, n = np.zeros(unit.shape[1]), np.zeros(unit.shape[1]), 0
        for i in range(0, len(unit), SCALE_CHUNK):
            part = unit[i:i + SCALE_CHUNK].astype(np.float64)
            part = part[np.isfinite(part).all(axis=1)]
            total, squares, n = total + part.sum(0), squares + (part ** 2).sum(0), n + len(part)
        mean = total / max(n, 1)
        return mean, np.sqrt(np.maximum(squares / max(n, 1) - mean ** 2, 0)) + 1e-6

    @property
    def own(self) -> bool:
        """Whether the cells are a user's own vectors (each row names its file)."""
        return "source" in self.index.grid.columns

    @property
    def about(self) -> str:
        """What the model is, in a line for the page."""
        if self.run is None:
            width = self.vectors.vectors.shape[1]
            if self.own:
                return (f"your vectors as given: {width}-d, no text space (more like this "
                        "only)")
            return (f"raw AlphaEarth: the grid's own {width}-d means, "
                    "no text space (more like this only)")
        text = self.run.text_model or "no text encoder"
        about = (f"AETHER run {self.name} (preset {self.run.preset}): {self.run.out_dim}-d, "
                 f"text encoder {text}")
        if self.own:
            trained = "+".join(self.run.cities) or "its own city"
            about += f"; your vectors through its image head (trained on {trained}"
            about += (", a generated raster: synthetic, its words say nothing about real "
                      "places)" if run_is_synthetic(self.run.config) else ")")
        return about

    def answer(self, label: str, q: np.ndarray, k: int, skip: np.ndarray | None = None
               ) -> Answer:
        """Cosines of every cell with the unit query ``q``, their range and the top-k cells
        (never the rows ``skip``: the labelled places)."""
        return self.scored(label, self.vectors.scores(q), k, skip)

    def scored(self, label: str, scores: np.ndarray, k: int, skip: np.ndarray | None = None,
               *, kind: str = "cosine", span: tuple[float, float] | None = None) -> Answer:
        """An answer of per-cell ``scores``: their range (``span`` when the scale is fixed,
        as a probability's is) and the top-k cells but the rows ``skip``."""
        skip = np.empty(0, np.int64) if skip is None else np.unique(skip)
        order = top_rows(scores, k + len(skip))
        order = order[~np.isin(order, skip)][:k]
        lo, hi = (float(np.nanmin(scores)), float(np.nanmax(scores))) if len(order) else (0, 1)
        note = spread_note(scores, skip)
        res = QueryResult(label, scores, ranked(self.index, scores, k=k, order=order), note=note)
        return Answer(self.name, res, *(span or (lo, hi)), note, kind)


@dataclass
class Answer:
    """One panel's answer: the scores, their range and what the page says about them."""

    model: str
    result: QueryResult
    lo: float
    hi: float
    note: str | None
    kind: str = "cosine"  # what the scores are: "cosine", or "probability" (the classifier)

    def summary(self, heat: HeatRaster | None = None) -> dict[str, Any]:
        """The answer without the per-cell scores: top-k as GeoJSON points, the range, the
        note and (with ``heat``) how to read the heat bytes."""
        top = self.result.top
        feats = [{"type": "Feature",
                  "geometry": {"type": "Point", "coordinates": [float(r.lon), float(r.lat)]},
                  "properties": {"rank": int(r.rank), "cell_id": str(r.cell_id),
                                 "score": round(float(r.score), 4),
                                 "nearest_pois": r.nearest_pois,
                                 **({"source": str(r.source)} if "source" in top else {})}}
                 for r in top.itertuples()]
        out: dict[str, Any] = {"model": self.model, "query": self.result.query,
                               "lo": self.lo, "hi": self.hi, "note": self.note, "kind": self.kind,
                               "top": {"type": "FeatureCollection", "features": feats}}
        if heat is not None:
            (s, w), (n, e) = heat.bounds
            out["heat"] = {"height": heat.shape[0], "width": heat.shape[1],
                           "bounds": [[s, w], [n, e]], "levels": LEVELS, "nodata": NODATA}
        return out


class Gate:
    """Bounded admission: ``workers`` answers at a time and ``queue`` more waiting; any more
    is refused at once (503), so load never piles up in memory or in unanswered sockets.
    A queued request whose client has left is dropped before it is computed. Runs on the
    event loop (one thread): plain counters need no lock."""

    def __init__(self, workers: int, queue: int) -> None:
        import anyio

        if workers < 1 or queue < 0:
            raise InputError(f"workers {workers}, queue {queue}",
                             "use at least 1 worker and a queue of 0 or more")
        self.workers, self.queue = workers, queue
        self._slots = anyio.Semaphore(workers)
        self._threads = anyio.CapacityLimiter(workers)
        self.admitted = 0  # running or waiting
        self.counts = {"answered": 0, "refused": 0, "abandoned": 0}

    async def run(self, request: Any, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)`` in a worker thread once a slot is free; None when the client left
        while it waited; ``BusyError`` when no place is left."""
        import anyio

        if self.admitted >= self.workers + self.queue:
            self.counts["refused"] += 1
            raise BusyError(f"busy: {self.admitted} requests running or queued",
                       f"retry in {RETRY_AFTER_S} s")
        self.admitted += 1
        try:
            # take a GET's first message now (a POST's endpoint has read its bounded body),
            # so the server listens on the socket while this waits and sees a client hang up
            if request.method == "GET":
                await request.receive()
            async with self._slots:
                if await request.is_disconnected():
                    self.counts["abandoned"] += 1
                    return None
                out = await anyio.to_thread.run_sync(lambda: fn(*args), limiter=self._threads)
                self.counts["answered"] += 1
                return out
        finally:
            self.admitted -= 1

    def state(self) -> dict[str, int]:
        return {"workers": self.workers, "queue": self.queue, "admitted": self.admitted,
                **self.counts}


@dataclass(frozen=True)
class BaseLayers:
    """The city's own OSM layers as the page draws them: GeoJSON bytes, plain and gzipped."""

    geojson: bytes
    gzipped: bytes
    features: int


def base_layers(basemap: Any, pois: Any) -> BaseLayers:
    """The base map (roads, rails, water, green, buildings) and the POIs as one compact
    GeoJSON in lon/lat, made once at load so a page load costs no work: coordinates to 1e-5°
    (about a metre, what the layers were simplified to), the layer the only property."""
    import gzip

    import geopandas as gpd
    import pandas as pd
    import shapely

    parts = [gpd.GeoDataFrame({"layer": ["poi"] * len(pois)}, geometry=pois.geometry.values,
                              crs=pois.crs).to_crs("EPSG:4326")]
    if basemap is not None:
        parts.insert(0, basemap[["layer", "geometry"]].to_crs("EPSG:4326"))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.set_geometry(shapely.transform(frame.geometry.values,
                                                 lambda c: np.round(c, 5)))
    frame = frame[~frame.geometry.is_empty & frame.geometry.notna()]
    doc = json.dumps(frame.to_geo_dict(drop_id=True), separators=(",", ":")).encode()
    return BaseLayers(doc, gzip.compress(doc, 6), len(frame))


def check_basemap(basemap: str) -> str:
    """``basemap`` when it is one of ``BASEMAPS``: checked before minutes of loading."""
    if basemap not in BASEMAPS:
        raise InputError(f"--basemap {basemap}", f"use one of {', '.join(BASEMAPS)}")
    return basemap


class CityApp:
    """The state behind the web app: every panel loaded once, queries answered from memory."""

    def __init__(self, city: str, panels: list[Panel], *, basemap: str = "city",
                 synthetic: bool = False, workers: int | None = None, queue: int = 16) -> None:
        if not panels:
            raise InputError(f"nothing to serve for {city}", "run `aether encode` first")
        self.city = city
        self.basemap = check_basemap(basemap)
        first = panels[0].index
        #: the city layers (one copy for every panel), None unless ``basemap`` is "city"
        self.base = base_layers(first.basemap, first.pois) if basemap == "city" else None
        #: the files of a user's own vectors and their cells, in order (none for a city)
        self.sources = _sources(first.grid)
        #: what the page says about its base map, when there is something to say
        self.base_note = (f"no offline street map for {city} (its POIs did not come from a "
                          "PBF): only its POIs are drawn; --basemap osm draws online tiles"
                          if basemap == "city" and first.basemap is None else
                          "no base map under your vectors: --basemap osm draws OpenStreetMap's "
                          "online tiles" if self.sources and basemap == "none" else None)
        self.synthetic = synthetic
        self.panels = {p.name: p for p in panels}
        self.workers = workers or os.cpu_count() or 1
        self.queue = queue
        _one_thread_per_answer(text=any(p.run is not None for p in panels))

    def __repr__(self) -> str:  # a panel holds a grid and a torch module: never print them
        cells = {len(p.index.grid) for p in self.panels.values()}
        size = f", {cells.pop():,} cells" if len(cells) == 1 else ""
        return (f"CityApp({self.city!r}: panels {', '.join(self.panels)}{size}; "
                "query.serve.create_app(app) serves it)")

    def panel(self, name: str | None) -> Panel:
        if name is None:
            return next(iter(self.panels.values()))
        if name not in self.panels:
            raise InputError(f"unknown model {name!r}", f"served: {', '.join(self.panels)}")
        return self.panels[name]

    def text(self, name: str, q: str, k: int) -> Answer:
        panel = self.panel(name)
        return panel.answer(q, self._text_vector(panel, q), _k(k))

    def _text_vector(self, panel: Panel, q: str) -> np.ndarray:
        """The unit vector of the words ``q`` in ``panel``'s space."""
        from aether.ml.encode import apply_text

        (q,) = check_queries([q])
        if panel.run is None:
            raise InputError(f"{panel.name}: no text space, so it cannot read {q!r}",
                             "click a cell for places like it, or pick a trained model")
        vec = apply_text(panel.run, [q])[0]
        return vec / np.linalg.norm(vec)

    def _rows(self, panel: Panel, labels: Labels) -> tuple[np.ndarray, np.ndarray]:
        """Grid rows of the positive and the negative places."""
        from aether.query.similar import cells_at

        def rows(points: list[tuple[float, float]]) -> np.ndarray:
            return cells_at(panel.index, points) if points else np.empty(0, np.int64)

        return rows(labels.pos), rows(labels.neg)

    def like(self, name: str, labels: Labels, q: str | None, k: int) -> Answer:
        """"More like this": ``2·mean(positives) − mean(negatives)`` of the unit vectors
        (``example_vector``), the words ``q`` (on a panel with a text space) counting as one
        more positive. The labelled places are left out of the answer."""
        panel = self.panel(name)
        pos, neg = self._rows(panel, labels)
        vecs = panel.index.vectors
        examples, label = vecs[pos], "more like this"
        if q is not None and panel.run is not None:
            text = self._text_vector(panel, q)
            examples, label = np.vstack([text[None, :], examples]), f"{q.strip()} + labels"
        if not len(examples):
            raise InputError("no positive place given", "click a place (shift-click adds a "
                             "negative), or type words on a trained model")
        return panel.answer(label, example_vector(examples, vecs[neg] if len(neg) else None),
                            _k(k), skip=np.concatenate([pos, neg]))

    def classify(self, name: str, labels: Labels, k: int) -> Answer:
        """Each cell's probability of being positive under a logistic regression fitted on
        the labelled cells (the panel's unit vectors, standardised by the grid's own mean and
        sd): the fit is bounded by the label cap, and drawing it is one matrix-vector product
        over the grid, as a search is."""
        from scipy.special import expit
        from sklearn.linear_model import LogisticRegression

        panel = self.panel(name)
        pos, neg = self._rows(panel, labels)
        rows = np.concatenate([pos, neg])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        x = panel.index.vectors[rows]
        ok = np.isfinite(x).all(axis=1)
        n_pos, n_neg = int(y[ok].sum()), int((1 - y[ok]).sum())
        if n_pos < 1 or n_neg < 1:
            raise InputError(f"the classifier needs at least 1 positive and 1 negative label "
                             f"on covered cells (got {n_pos} and {n_neg})",
                             "click a place for a positive, shift-click one for a negative")
        mean, sd = panel.scale
        fit = LogisticRegression(C=CLASSIFIER_C, class_weight="balanced",
                                 max_iter=CLASSIFIER_ITER).fit((x[ok] - mean) / sd, y[ok])
        w = fit.coef_[0] / sd  # folded into one product with the unit vectors
        b = float(fit.intercept_[0] - mean @ w)
        p = expit(panel.vectors.unit @ w.astype(np.float32) + np.float32(b))
        return panel.scored(f"classifier ({n_pos} positive, {n_neg} negative)", p, _k(k),
                            skip=rows, kind="probability", span=(0.0, 1.0))

    def ask(self, model: str, q: str | None, at: list[str], not_at: list[str], k: int,
            mode: str = "search") -> Answer:
        """A text query, "more like this" when labelled places are given (with the words,
        if any), or the classifier of the labels (``mode`` "classify")."""
        labels = Labels.parse(at, not_at)
        if mode == "classify":
            return self.classify(model, labels, k)
        if mode != "search":
            raise InputError(f"mode {mode!r}", "use mode=search or mode=classify")
        if labels.pos or labels.neg:
            return self.like(model, labels, q, k)
        if q is None:
            raise InputError("no query given", "pass q=... or at=LON,LAT")
        return self.text(model, q, k)

    def cell_ids(self, labels: Labels) -> list[str]:
        """The grid cell of each label (positives first), as ``Labels.rows`` lists them."""
        panel = self.panel(None)
        pos, neg = self._rows(panel, labels)
        return [str(c) for c in panel.index.grid["cell_id"].to_numpy()[np.r_[pos, neg]]]

    def envelope(self, ans: Answer) -> bytes:
        """The page's reply: a little-endian uint32 length, that many bytes of JSON (the
        summary) and the heat raster's bytes (``height × width``, one per pixel)."""
        heat = self.panel(ans.model).heat
        head = json.dumps(ans.summary(heat)).encode()
        return struct.pack("<I", len(head)) + head + heat.encode(ans.result.scores, ans.lo,
                                                                 ans.hi)


def _sources(grid: Any) -> list[dict[str, Any]]:
    """Each file of a user's own vectors (``source``) with its number of cells, in order."""
    if "source" not in grid.columns:
        return []
    counts = grid["source"].value_counts(sort=False)
    return [{"file": str(f), "cells": int(n)} for f, n in counts.items()]


def _one_thread_per_answer(*, text: bool) -> None:
    """Answers run side by side, one per worker, so each gets one thread: the BLAS and torch
    pools would oversubscribe the cores. Measured on a busy 2-core machine: two concurrent
    1 M × 128 products took 99 ms per answer on OpenBLAS's two threads, 57 ms on one (it is
    memory-bound: one alone is as fast); a short text query 240 ms on torch's pool, 19 ms on
    one thread."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if text:
        import torch

        torch.set_num_threads(1)


def _k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k = {k}", f"ask for 1 to {MAX_K} places")
    return k


def load_panels(city_dir: Path, runs: list[ModelRun], cell: str | float | CellSpec, *,
                raw: bool = True) -> list[Panel]:
    """A panel per trained run (its encoded grid), plus raw AlphaEarth (the grid's means);
    everything an answer needs that does not depend on the query is made here, once."""
    from aether.core.aef import BANDS
    from aether.ml.encode import apply_text, read_grid
    from aether.query.search import load_index

    panels: list[Panel] = []
    for run in runs:
        idx = load_index(city_dir, run, cell)
        if panels:  # the base map is the city's, not the run's: one copy for every panel
            idx.basemap = panels[0].index.basemap
        apply_text(run, ["warm up the text encoder"])  # the first query answers fast
        panels.append(build_panel(run.name, idx, idx.vectors, run))
    if raw and panels:
        base = panels[0]
        grid = read_grid(city_dir, cell).set_index("cell_id").reindex(base.index.grid["cell_id"])
        panels.append(same_cells(base, RAW, grid[list(BANDS)].to_numpy(np.float32), None))
    return panels


def own_panels(index: CityIndex, runs: list[ModelRun]) -> list[Panel]:
    """A user's own vectors as given (``OWN``, "more like this") and, per run, the same
    cells encoded by its image head (``own_vectors.encode_vectors``: text works there);
    every panel shares the first's cells, centres and heat raster."""
    from aether.ml.encode import apply_text
    from aether.query.own_vectors import OWN, encode_vectors

    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1 or n == OWN})
    if twice:
        raise InputError(f"two panels would be named {twice[0]!r}",
                         "serve runs of distinct names (rename a run directory)")
    encoded = [encode_vectors(index, run) for run in runs]  # a width refused before any build
    first = build_panel(OWN, index, index.vectors, None)
    panels = [first]
    for run, enc in zip(runs, encoded, strict=True):
        apply_text(run, ["warm up the text encoder"])  # the first query answers fast
        panels.append(same_cells(first, run.name, enc.vectors, run))
    return panels


def same_cells(base: Panel, name: str, vectors: np.ndarray, run: ModelRun | None) -> Panel:
    """A panel of other vectors over ``base``'s cells: its centres, POI tree, click lookup,
    heat raster and base map are shared, not made again."""
    vi = VectorIndex(vectors)
    idx = copy.copy(base.index)
    idx.vectors, idx.poi_vectors = vi.unit, None
    panel = Panel(name, idx, vi, run, base.heat)
    _ = panel.scale  # query-independent: made at load
    return panel


def build_panel(name: str, idx: CityIndex, vectors: np.ndarray, run: ModelRun | None) -> Panel:
    """A panel with its query-independent parts built: unit vectors, centres, the POI tree,
    the cell lookup for clicks, the heat raster and the vectors' mean and sd. The grid keeps
    ids, centres, shapes and (a user's own vectors) files only, and the index holds the unit
    vectors: one float32 copy of the vectors, not three (at a million 128-d cells each is
    512 MB)."""
    vi = VectorIndex(vectors)
    keep = ["cell_id", "x", "y", "geometry", *(["source"] if "source" in idx.grid else [])]
    idx.grid = idx.grid[keep]
    idx.vectors = vi.unit
    _ = idx.centres, idx.poi_tree, idx.grid.sindex  # each cached by its first use: now
    heat = heat_raster(idx.grid["x"].to_numpy(float), idx.grid["y"].to_numpy(float), idx.crs)
    drawn = heat.cells_drawn(len(idx.grid))
    if drawn < 0.9 * len(idx.grid):
        log.warning("the heat map draws %d of %d cells: they lie so far apart that many are "
                    "smaller than one of its %d × %d pixels (the top places are all marked)",
                    drawn, len(idx.grid), *heat.shape[::-1])
    panel = Panel(name, idx, vi, run, heat)
    _ = panel.scale  # what the classifier standardises by
    return panel


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening socket on ``host:port`` (0: any free port) and the app's URL; accepting
    before the URL is shown, so a client may connect at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}",
                         "pick another --port (0: any free port)") from None
    shown = f"[{host}]" if ":" in host else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}/"
