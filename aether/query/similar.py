"""Places like this one: cosine similarity to example cells, over a city's grid vectors.

Positives and negatives combine GeoVibes-style, ``2·mean(pos) − mean(neg)`` on unit vectors,
so "like these, unlike those" is one query vector. Top-k search is exact (one float32 matrix
product) up to ``EXACT_MAX`` vectors; above that an approximate index answers, built once per
grid, since an exact scan of tens of millions of cells per click is too slow: FAISS product
quantisation with 4-bit fast-scan codes (2 dims per code, 1/16 of the float32 bytes) proposes
``RERANK × k`` candidates, re-scored exactly on the float32 vectors already held. A graph index
(HNSW) was measured first and dropped: on 1 M random unit vectors its recall@10 was 0.74
after a 40-minute build (tests/benchmarks/bench_similar.py); the scan needs no structure in
the data and builds in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.errors import InputError
from aether.query.search import CityIndex, QueryResult, ranked, spread_note, top_rows

if TYPE_CHECKING:
    from aether.ml.encode import ModelRun

log = logging.getLogger(__name__)

#: Above this many vectors the top-k search goes through the approximate index.
EXACT_MAX = 2_000_000
#: Candidates per result the quantised scan proposes for exact re-scoring: recall@10 >= 0.95
#: on random unit vectors (the hard case, no structure), measured by the benchmark.
RERANK = 100
#: Vectors the product quantiser is trained on (a fixed-seed sample: training is per grid).
PQ_TRAIN = 200_000
#: Vectors added to the index per call (bounds the padded copy).
PQ_CHUNK = 262_144


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; NaN rows (masked cells) stay NaN."""
    v = np.asarray(vectors, np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / norm


def example_vector(positives: np.ndarray, negatives: np.ndarray | None = None) -> np.ndarray:
    """The query vector of example vectors (rows): ``2·pos − neg`` of unit means, normalised."""
    pos = unit_rows(positives)
    pos = pos[np.isfinite(pos).all(axis=1)]
    if not len(pos):
        raise InputError("every example place is masked (no AlphaEarth pixels)",
                         "pick places inside the covered area")
    q = pos.mean(axis=0)
    neg = unit_rows(negatives) if negatives is not None and len(negatives) else pos[:0]
    neg = neg[np.isfinite(neg).all(axis=1)]
    if len(neg):
        q = 2 * q / np.linalg.norm(q) - neg.mean(axis=0)
    norm = float(np.linalg.norm(q))
    if not norm > 0:
        raise InputError("the positive and negative examples cancel out",
                         "give different examples")
    return (q / norm).astype(np.float32)


@dataclass
class VectorIndex:
    """Top-k cosine search over fixed vectors: exact below ``exact_max``, quantised scan plus
    exact re-scoring above."""

    vectors: np.ndarray  # (N, d), NaN rows allowed (never returned); kept as unit rows
    exact_max: int = EXACT_MAX
    _unit: np.ndarray = field(init=False, repr=False)
    _ok: np.ndarray = field(init=False, repr=False)
    _pq: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._unit = unit_rows(self.vectors)
        self.vectors = self._unit  # only the unit rows are needed: one copy held, not two
        self._ok = np.flatnonzero(np.isfinite(self._unit).all(axis=1))
        if len(self._ok) > self.exact_max:
            self._pq = _build_pq(self._unit, self._ok)

    @property
    def unit(self) -> np.ndarray:
        """The vectors scaled to unit length (one contiguous float32 matrix)."""
        return self._unit

    @property
    def approximate(self) -> bool:
        return self._pq is not None

    def describe(self) -> str:
        """How top-k is answered, e.g. ``exact`` or ``PQ64x4fs + exact re-scoring of 100·k``."""
        if self._pq is None:
            return "exact"
        return f"PQ{self._pq.d // 2}x4fs + exact re-scoring of {RERANK}·k"

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Cosine of every vector with the unit query ``q`` (NaN on masked rows)."""
        return self._unit @ np.asarray(q, np.float32)

    def top(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and cosines of the ``k`` most similar vectors, best first."""
        if k < 1:
            raise InputError(f"k = {k}", "ask for at least one result, e.g. --k 10")
        k = min(k, len(self._ok))
        q = np.asarray(q, np.float32)
        if self._pq is None:  # one product over all rows (masked rows are NaN, never top)
            s = self._unit @ q
            order = top_rows(s, k)
            return order, s[order]
        _, cand = self._pq.search(_padded(q[None, :], self._pq.d),
                                  min(RERANK * k, len(self._ok)))
        rows = self._ok[cand[0][cand[0] >= 0]]
        s = self._unit[rows] @ q
        part = top_rows(s, k)
        return rows[part], s[part]


def _padded(x: np.ndarray, d: int) -> np.ndarray:
    """Rows zero-padded to ``d`` columns (inner products unchanged), float32 C-contiguous."""
    out = np.zeros((len(x), d), np.float32)
    out[:, :x.shape[1]] = x
    return out


def _build_pq(unit: np.ndarray, rows: np.ndarray) -> Any:
    """A FAISS ``PQ<M>x4fs`` inner-product index over ``unit[rows]`` (M = 2 dims per code,
    the dimension padded to a multiple of 4 as fast scan needs an even M)."""
    try:
        import faiss
    except ImportError:
        raise InputError(f"{len(rows):,} vectors need an approximate index",
                         "pip install 'aether[serve]' (faiss-cpu)") from None
    d = -(-unit.shape[1] // 4) * 4
    log.info("building a PQ%dx4fs index over %d vectors", d // 2, len(rows))
    index = faiss.index_factory(d, f"PQ{d // 2}x4fs", faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(rows, min(PQ_TRAIN, len(rows)), replace=False)
    index.train(_padded(unit[np.sort(sample)], d))
    for start in range(0, len(rows), PQ_CHUNK):
        index.add(_padded(unit[rows[start:start + PQ_CHUNK]], d))
    return index


def parse_lonlat(text: str) -> tuple[float, float]:
    """``'24.94,60.17'`` → (lon, lat), checked."""
    try:
        lon, lat = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{text!r} is not LON,LAT", "e.g. --at 24.945,60.170") from None
    if not (np.isfinite(lon) and np.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
        raise InputError(f"{text!r} is not a place on Earth", "longitude first: --at LON,LAT")
    return lon, lat


def cells_at(index: CityIndex, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Row of the grid cell holding each (lon, lat); InputError for a point off the grid."""
    import geopandas as gpd
    from shapely.geometry import Point

    pts = gpd.GeoSeries([Point(p) for p in points], crs="EPSG:4326")
    hit_pt, hit_cell = index.grid.sindex.query(pts.to_crs(index.grid.crs).values,
                                               predicate="intersects")
    rows = np.full(len(points), -1)
    rows[hit_pt[::-1]] = hit_cell[::-1]  # first hit per point
    for (lon, lat), r in zip(points, rows, strict=True):
        if r < 0:
            raise InputError(f"{lon:g},{lat:g} is outside the encoded grid",
                             "pick a place inside the city (LON,LAT)")
    return rows


def similar(index: CityIndex, *, at: Sequence[tuple[float, float]] = (),
            not_at: Sequence[tuple[float, float]] = (),
            poi_vectors: np.ndarray | None = None, k: int = 10, label: str = "similar",
            include_examples: bool = False) -> QueryResult:
    """Cells most like the example places (cells at ``at`` and POI vectors), unlike ``not_at``;
    the example cells themselves (trivially the most alike) only with ``include_examples``."""
    rows = cells_at(index, list(at)) if at else np.empty(0, np.int64)
    pos = [index.vectors[rows]] if at else []
    if poi_vectors is not None and len(poi_vectors):
        pos.append(np.asarray(poi_vectors, np.float32))
    if not pos:
        raise InputError("no example place given", "pass --at LON,LAT or --poi ID")
    neg = index.vectors[cells_at(index, list(not_at))] if not_at else None
    q = example_vector(np.concatenate(pos), neg)
    vi = VectorIndex(index.vectors)
    skip = np.array([], np.int64) if include_examples else np.unique(rows)
    order, _ = vi.top(q, k + len(skip))
    order = order[~np.isin(order, skip)][:k]
    scores = vi.scores(q)
    return QueryResult(label, scores, ranked(index, scores, k=k, order=order),
                       note=spread_note(scores, skip))


def poi_vectors(city_dir: Path, run: ModelRun, poi_ids: Sequence[str]) -> np.ndarray:
    """The AETHER vectors of POIs by id (the encoded ``pois`` table); unknown ids refused."""
    from aether.io.store import CityStore
    from aether.io.tables import read_table
    from aether.ml.encode import AETHER_COLUMNS

    if not poi_ids:
        return np.empty((0, len(AETHER_COLUMNS)), np.float32)
    enc = read_table(CityStore.at(city_dir).encoded_pois(run.name),
                     ["poi_id", *AETHER_COLUMNS], "aether pois").set_index("poi_id")
    missing = [p for p in poi_ids if p not in enc.index]
    if missing:
        raise InputError(f"no encoded POI {missing[0]!r} in model {run.name}",
                         "POI ids look like osm:node/123 (see pois.parquet)")
    return enc.loc[list(poi_ids), list(AETHER_COLUMNS)].to_numpy(np.float32)
