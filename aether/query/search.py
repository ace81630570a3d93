"""Natural-language search over a city: a text query against every encoded grid cell.

The query goes through the run's own frozen text encoder and text head, so it lands in the
space the AE head maps places into; every cell is scored by cosine, and the top-k cells come
with the POIs nearest to them. ``hit_rate`` measures it: for queries naming a POI category,
how often the top-k places hold a real POI of that category, against the base rate.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aether.core.aef import utm_epsg
from aether.core.cells import CellSpec
from aether.errors import InputError, TableError
from aether.io.store import CityStore
from aether.io.tables import read_table
from aether.ml.encode import ModelRun, apply_text
from aether.ml.encode import read_aether_grid as _read_grid

MAX_QUERY_CHARS = 500
#: Below this spread of scores over the grid (max − min) a map shows noise: it is said in words.
FLAT_SPREAD = 0.01
#: Scores this close to the best one tie with it.
TIE = 5e-4


def _unreadable(q: str) -> str | None:
    """What makes a query no text: a control character (NUL, ESC, ...; white space aside), or
    bytes that were not UTF-8 (U+FFFD from the web server, lone surrogates on a command
    line)."""
    for c in q:
        kind = unicodedata.category(c)
        if kind == "Cc" and c not in "\t\n\r":
            return f"a control character ({c.encode('unicode_escape').decode('ascii')})"
        if kind == "Cs" or c == "\ufffd":
            return "bytes that are not UTF-8"
    return None


def check_queries(queries: list[str]) -> list[str]:
    """Queries stripped; an empty or over-long one is an InputError."""
    if not queries:
        raise InputError("no query given", 'e.g. aether query "coffee shop" --city Helsinki')
    out = [q.strip() for q in queries]
    for q in out:
        if not q:
            raise InputError("the query is empty", 'give some words, e.g. "coffee shop"')
        bad = _unreadable(q)
        if bad is not None:
            raise InputError(f"the query holds {bad}", "give words as UTF-8 text, e.g. "
                             '"coffee shop"')
        if len(q) > MAX_QUERY_CHARS:
            raise InputError(f"a query is {len(q)} characters long",
                             f"keep queries under {MAX_QUERY_CHARS} characters")
    return out


@dataclass
class QueryResult:
    """One query's scores over the grid (NaN on masked cells), its top-k cells and, where the
    POIs' own AETHER vectors are known, its top-k POIs."""

    query: str
    scores: np.ndarray
    top: pd.DataFrame  # rank, cell_id, score, lon, lat, x, y, nearest_pois
    top_pois: pd.DataFrame | None = None  # rank, poi_id, name, category, score, lon, lat, x, y
    note: str | None = None  # the spread in words when the scores cannot be read as they look

    def __repr__(self) -> str:
        best = (f", best {self.top['score'].iloc[0]:.3f} at {self.top['cell_id'].iloc[0]}"
                if len(self.top) else "")
        return (f"QueryResult({self.query!r}: {len(self.scores):,} cells scored, "
                f"top {len(self.top)}{best})")


@dataclass
class CityIndex:
    """What a query needs, loaded once for many queries: encoded grid cells and POIs."""

    grid: Any  # GeoDataFrame: cell_id, x, y, E000..E127, geometry (EPSG:4326)
    vectors: np.ndarray  # (N, the head's out_dim)
    pois: Any  # GeoDataFrame with x, y in the grid's UTM crs
    crs: str
    poi_vectors: np.ndarray | None = None  # (len(pois), out_dim) AETHER vectors, NaN where masked
    basemap: Any = None  # GeoDataFrame (layer, geometry) of roads, water, green, buildings

    @cached_property
    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Lon and lat of every cell's centroid: reprojecting a million cells per answer was
        most of an answer's time, so it is done once."""
        c = self.grid.geometry.to_crs(self.crs).centroid.to_crs("EPSG:4326")
        return c.x.to_numpy(), c.y.to_numpy()

    @cached_property
    def poi_tree(self) -> Any:
        """A KD-tree over the POIs' projected x, y (for the POIs nearest a cell)."""
        from scipy.spatial import cKDTree

        return cKDTree(np.column_stack([self.pois["x"], self.pois["y"]]))

    def __repr__(self) -> str:
        return (f"CityIndex({len(self.grid):,} cells × {self.vectors.shape[1]}, "
                f"{len(self.pois):,} POIs, {self.crs})")


def load_index(city_dir: Path, run: ModelRun, cell: str | float | CellSpec) -> CityIndex:
    grid = _read_grid(city_dir, run, cell).reset_index(drop=True)
    pois = read_table(CityStore.at(city_dir).pois, ["poi_id", "name", "category", "geometry"],
                      "pois")
    c = grid.geometry.union_all().centroid
    crs = f"EPSG:{utm_epsg(c.x, c.y)}"
    xy = pois.geometry.to_crs(crs)
    pois = pois.assign(x=xy.x.to_numpy(), y=xy.y.to_numpy())
    store = CityStore.at(city_dir)
    enc_path = store.encoded_pois(run.name)
    poi_vectors = None
    if enc_path.is_file():
        enc = read_table(enc_path, ["poi_id", *run.columns], "aether pois")
        poi_vectors = (enc.set_index("poi_id")[list(run.columns)].reindex(pois["poi_id"])
                       .to_numpy(np.float32))
    basemap = None
    if store.basemap.is_file():
        basemap = read_table(store.basemap, ["layer", "geometry"], "basemap")
    return CityIndex(grid, grid[list(run.columns)].to_numpy(np.float32), pois, crs,
                     poi_vectors, basemap)


def search(index: CityIndex, run: ModelRun, queries: list[str], *, k: int = 10, n_pois: int = 3,
           cache_path: Path | None = None) -> list[QueryResult]:
    """Score every cell for each query; top-k cells with their nearest POIs."""
    if k < 1:
        raise InputError(f"k = {k}", "ask for at least one result, e.g. --k 10")
    queries = check_queries(queries)
    q = apply_text(run, queries, cache_path)
    sims = index.vectors @ q.T  # NaN rows (masked cells) stay NaN
    poi_sims = index.poi_vectors @ q.T if index.poi_vectors is not None else None
    return [QueryResult(text, sims[:, j], ranked(index, sims[:, j], k=k, n_pois=n_pois),
                        None if poi_sims is None else top_pois(index, poi_sims[:, j], k),
                        spread_note(sims[:, j]))
            for j, text in enumerate(queries)]


def top_pois(index: CityIndex, s: np.ndarray, k: int) -> pd.DataFrame:
    """The k POIs whose own AETHER vectors score highest (masked POIs last, never shown)."""
    order = np.argsort(np.where(np.isnan(s), np.inf, -s), kind="stable")[:k]
    order = order[np.isfinite(s[order])]
    pois = index.pois.iloc[order]
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1), "poi_id": pois["poi_id"].to_numpy(),
        "name": [_label(v) for v in pois["name"]],
        "category": pois["category"].astype(str).to_numpy(), "score": s[order],
        "lon": pois.geometry.x.to_numpy(), "lat": pois.geometry.y.to_numpy(),
        "x": pois["x"].to_numpy(), "y": pois["y"].to_numpy()})


def ranked(index: CityIndex, s: np.ndarray, *, k: int, n_pois: int = 3,
           order: np.ndarray | None = None) -> pd.DataFrame:
    """The top-k cells of scores ``s`` (or the cells ``order``, best first) with their
    nearest POIs: what every answer over a grid shows."""
    if order is None:
        order = top_rows(s, k)
    lon, lat = index.centres
    cells = index.grid.iloc[order]  # only the k rows: a string column of 1 M is slow to copy
    x, y = cells["x"].to_numpy(), cells["y"].to_numpy()
    top = pd.DataFrame({
        "rank": np.arange(1, len(order) + 1),
        "cell_id": cells["cell_id"].to_numpy(),
        "score": s[order],
        "lon": lon[order], "lat": lat[order],
        "x": x, "y": y,
        "nearest_pois": _nearest_pois(index, x, y, n_pois),
    })
    if "source" in cells.columns:  # a user's vectors: which file each row came from
        top["source"] = cells["source"].to_numpy()
    return top


def _nearest_pois(index: CityIndex, x: np.ndarray, y: np.ndarray, n_pois: int
                  ) -> list[list[dict[str, Any]]]:
    """Name, category and distance of the POIs nearest each point (none without POIs)."""
    if not len(index.pois) or not n_pois:
        return [[] for _ in x]
    dist, near = index.poi_tree.query(np.column_stack([x, y]),
                                      k=min(n_pois, len(index.pois)))
    near = np.atleast_2d(near.reshape(len(x), -1))
    dist = np.atleast_2d(dist.reshape(len(x), -1))
    rows = np.unique(near)  # the POIs named, read once (not a frame lookup per name)
    names = dict(zip(rows, [_label(v) for v in index.pois["name"].iloc[rows]], strict=True))
    cats = dict(zip(rows, index.pois["category"].iloc[rows].astype(str), strict=True))
    return [[{"name": names[i], "category": cats[i], "distance_m": round(float(d), 1)}
             for i, d in zip(row, drow, strict=True)]
            for row, drow in zip(near, dist, strict=True)]


def spread_note(scores: np.ndarray, skip: np.ndarray | None = None) -> str | None:
    """A warning in words when the map cannot be read as it looks: every cell scores about
    the same, or many cells tie with the best; None when the scores spread out. Rows
    ``skip`` (the examples of "more like this", not in the answer) are not counted."""
    ok = scores if skip is None or not len(skip) else np.delete(scores, skip)
    ok = ok[np.isfinite(ok)]
    if not len(ok):
        return "no cell has a score (every cell is masked)"
    lo, hi = float(ok.min()), float(ok.max())
    if hi - lo < FLAT_SPREAD:
        return f"all cells within {max(hi - lo, 0.001):.3f}: no place stands out"
    ties = int(np.count_nonzero(ok >= hi - TIE))
    return f"{ties:,} cells tie with the best (within {TIE:g})" if ties > 1 else None


def top_rows(s: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest scores, best first, ties by row; NaN (masked) never. One
    partial partition, then a sort of the k: no sort of the whole grid per answer."""
    neg = np.where(np.isnan(s), np.inf, -s)
    k = min(k, len(s))
    part = np.argpartition(neg, k - 1)[:k] if 0 < k < len(s) else np.arange(k)
    part = part[np.lexsort((part, neg[part]))]
    return part[np.isfinite(neg[part])]


def _label(name: Any) -> str:
    return str(name) if isinstance(name, str) and name else "(unnamed)"


def query_city(city_dir: Path, run: ModelRun, queries: list[str], *,
               cell: str | float | CellSpec, k: int = 10
               ) -> tuple[CityIndex, list[QueryResult]]:
    """Load the encoded grid of a run and answer queries over it."""
    queries = check_queries(queries)
    index = load_index(city_dir, run, cell)
    return index, search(index, run, queries, k=k,
                         cache_path=CityStore.at(city_dir).text_embeddings)


def hit_rates(city_dir: Path, run: ModelRun, index: CityIndex,
              category_queries: dict[str, list[str]], *, k: int = 10) -> pd.DataFrame:
    """Per category query: share of top-k cells holding a POI of the category (vs the share of
    all scored cells), and share of the top-k POIs (ranked by their AETHER vectors) of that
    category (vs its share of all POIs)."""
    import geopandas as gpd

    queries = list(category_queries)
    store = CityStore.at(city_dir)
    results = search(index, run, queries, k=k, cache_path=store.text_embeddings)
    cells = gpd.GeoDataFrame({"u": np.arange(len(index.grid))},
                             geometry=index.grid.geometry.values, crs=index.grid.crs)
    hit = gpd.sjoin(index.pois[["category", "geometry"]].to_crs(cells.crs), cells,
                    predicate="within")
    enc = read_table(store.encoded_pois(run.name), ["poi_id", *run.columns], "aether pois")
    enc = enc[np.isfinite(enc[run.columns[0]])]
    cat = index.pois.set_index("poi_id")["category"].reindex(enc["poi_id"]).to_numpy()
    poi_sims = enc[list(run.columns)].to_numpy(np.float32) @ apply_text(
        run, queries, store.text_embeddings).T
    scored = np.isfinite(index.vectors[:, 0])
    rows = []
    for j, (res, (query, cats)) in enumerate(zip(results, category_queries.items(), strict=True)):
        with_cat = np.zeros(len(index.grid), bool)
        with_cat[hit.loc[hit["category"].isin(cats), "u"].to_numpy()] = True
        top_cells = index.grid.index[index.grid["cell_id"].isin(res.top["cell_id"])]
        top_pois = np.argsort(-poi_sims[:, j], kind="stable")[:k]
        is_cat = np.isin(cat, cats)
        rows.append({
            "query": query, "categories": ", ".join(cats), "n_pois": int(is_cat.sum()),
            f"cell_hit@{k}": float(with_cat[top_cells].mean()),
            "cell_chance": float(with_cat[scored].mean()),
            f"poi_precision@{k}": float(is_cat[top_pois].mean()),
            "poi_chance": float(is_cat.mean()),
        })
    if not rows:
        raise TableError("no category queries given", "see aether/data/category_queries.yaml")
    return pd.DataFrame(rows)
