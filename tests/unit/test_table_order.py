"""The poi_embeddings table in bounded memory: rows made in the canonical order, written in
row groups, tasks folded as they finish.

Oracles are independent of the code under test: pandas' own stable sort for the order,
pandas' own Parquet reader for the file, plain Python for the task results.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from shapely.geometry import Point

from aether.core import aef, zonal
from aether.embeddings.fold import point_means_table
from aether.execution import cluster
from aether.io import tables
from aether.io.tables import sort_poi_embeddings, write_parquet


def _pois(ids: list[str]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"poi_id": ids}, geometry=[Point(0, 0)] * len(ids), crs="EPSG:4326")


def test_point_means_table_rows_come_in_sort_order_with_their_own_sums() -> None:
    ids = ["p9", "p10", "a", "p2", "b"]
    radii = [200.0, -45.0, 100.0]  # unsorted, a square first in radius_m order
    n = len(ids)
    rng = np.random.default_rng(0)
    sums = rng.uniform(1, 2, (len(radii), n, aef.N_BANDS))
    weight = rng.uniform(1, 5, (len(radii), n))
    weight[0, 3] = 0.0  # no valid pixel: NaN row
    parts = [(0, np.arange(n), [zonal.Partial(sums[k] * weight[k, :, None], weight[k], aef.N_BANDS)
                             for k in range(len(radii))])]
    got = point_means_table(_pois(ids), radii, 2024, iter(parts))
    expected_order = sorted(((np.float32(r), i, k, j) for k, r in enumerate(radii)
                             for j, i in enumerate(ids)), key=lambda t: (t[0], t[1]))
    assert list(zip(got.radius_m, got.poi_id, strict=True)) == [(r, i) for r, i, _, _ in
                                                                expected_order]
    for row, (_, _, k, j) in enumerate(expected_order):
        if weight[k, j] == 0:
            assert np.isnan(got.loc[row, "A00"]) and got.loc[row, "valid_fraction"] == 0
        else:
            np.testing.assert_allclose(got.loc[row, list(aef.BANDS)].to_numpy(float), sums[k, j],
                                       rtol=1e-6)
    assert got.poi_id.dtype == pd.StringDtype("pyarrow")
    same = sort_poi_embeddings(got)
    assert same is got  # already in order: no sorting copy
    by_pandas = got.sample(frac=1, random_state=1).sort_values(["radius_m", "poi_id"],
                                                               kind="stable")
    pd.testing.assert_frame_equal(sort_poi_embeddings(got.sample(frac=1, random_state=1)),
                                  by_pandas.reset_index(drop=True))


def test_a_shuffled_table_is_still_sorted() -> None:
    df = pd.DataFrame({"poi_id": pd.Series(["b", "a", "c", "a"], dtype="string"),
                       "radius_m": np.float32([100, 200, 100, 100]), "v": [1, 2, 3, 4]})
    out = sort_poi_embeddings(df)
    assert out["v"].tolist() == [4, 1, 3, 2]


def test_a_table_is_written_in_row_groups_and_reads_back_equal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "ROW_GROUP", 7)
    n = 50
    df = pd.DataFrame(np.arange(n * 3, dtype=np.float32).reshape(n, 3), columns=["x", "y", "z"])
    df.insert(0, "poi_id", pd.Series([f"p{i}" for i in range(n)], dtype="string"))
    path = write_parquet(df, tmp_path / "t.parquet")
    assert pq.ParquetFile(path).metadata.num_row_groups == 8  # 7 × 7 + 1
    pd.testing.assert_frame_equal(pd.read_parquet(path), df)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left


def test_as_completed_yields_every_result_with_few_held() -> None:
    """Started but not yet handed on: at most IN_FLIGHT per worker (a batch of 16 is not)."""
    lock = threading.Lock()
    started: list[int] = []

    def work(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    tasks = [dask.delayed(work)(i) for i in range(40)]
    got, most = [], 0
    with dask.config.set(num_workers=2):
        for r in cluster.as_completed(tasks):
            with lock:
                most = max(most, len(started) - len(got))
            got.append(r)
    assert sorted(got) == [i * i for i in range(40)]
    assert most <= cluster.IN_FLIGHT * 2
    with dask.config.set(scheduler="sync"):  # another scheduler: batches, same results
        assert sorted(cluster.as_completed(tasks)) == sorted(got)


def _split_sums(rng: np.random.Generator, n: int, radii: list[float], pieces: int) -> list:
    """Window results for n POIs × radii: each buffer's sums cut into up to ``pieces``
    parts (the parts a buffer gets from the cells it crosses)."""
    whole = rng.uniform(-2, 2, (len(radii), n, aef.N_BANDS)).astype(np.float32)
    weight = rng.uniform(1, 5, (len(radii), n))
    results = []
    share = rng.dirichlet(np.ones(pieces), size=n)  # (n, pieces): how the buffer is cut
    for w in range(pieces):
        idx = np.flatnonzero(rng.uniform(size=n) < 0.9) if w else np.arange(n)
        results.append((w, idx, [zonal.Partial(
            (whole[k][idx] * share[idx, w, None]).astype(np.float32),
            weight[k][idx] * share[idx, w], aef.N_BANDS) for k in range(len(radii))]))
    return results


def test_a_buffer_cut_by_windows_adds_up_in_the_same_bytes_whatever_the_order(
        tmp_path: Path) -> None:
    """Parts arriving in any order give the same file; the means are the parts' total."""
    from aether.embeddings.fold import write_point_means

    rng = np.random.default_rng(3)
    n, radii = 300, [200.0, 100.0]
    ids = [f"q{i:04d}" for i in rng.permutation(n)]
    results = _split_sums(rng, n, radii, 4)
    files = []
    for trial in range(3):
        order = rng.permutation(len(results)) if trial else np.arange(len(results))
        path = tmp_path / f"t{trial}" / "poi_embeddings.parquet"
        rows = write_point_means(_pois(ids), radii, 2024, [results[i] for i in order], path)
        assert rows == n * len(radii)
        assert [p.name for p in path.parent.iterdir()] == [path.name]  # no spool left
        files.append(path.read_bytes())
    assert files[1] == files[0] and files[2] == files[0]
    got = pd.read_parquet(tmp_path / "t0" / "poi_embeddings.parquet")
    for k, r in enumerate(radii):
        part = got[got.radius_m == np.float32(r)].set_index("poi_id").loc[ids]
        total = np.zeros((n, aef.N_BANDS))
        wsum = np.zeros(n)
        for _, idx, parts in results:
            total[idx] += parts[k].weighted_sum
            wsum[idx] += parts[k].valid_weight
        np.testing.assert_allclose(part[list(aef.BANDS)].to_numpy(float), total / wsum[:, None],
                                   rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(part["weight"].to_numpy(float), wsum, rtol=1e-6)
    assert got.radius_m.is_monotonic_increasing


def test_the_fold_holds_one_row_group_at_a_time(tmp_path: Path) -> None:
    """Small row groups: every group comes from its own spool file, in order, and the file
    read back equals the in-memory table."""
    from aether.embeddings.fold import PointFold, point_means_table

    rng = np.random.default_rng(4)
    n, radii = 250, [100.0, 200.0]
    ids = [f"z{i:03d}" for i in range(n)]
    results = _split_sums(rng, n, radii, 3)
    fold = PointFold(_pois(ids), radii, 2024, tmp_path, rows_per_group=64)
    for r in results:
        fold.add(r)
    assert len(list(tmp_path.glob("*.bin"))) == fold.n_groups == 8  # ceil(500 / 64)
    batches = list(fold.batches())
    assert [len(b) for b in batches] == [64] * 7 + [52]
    assert not list(tmp_path.glob("*.bin"))  # each spool file is gone once folded
    table = point_means_table(_pois(ids), radii, 2024, results)
    import pyarrow as pa

    from_groups = pa.Table.from_batches(batches).to_pandas()
    np.testing.assert_array_equal(from_groups[list(aef.BANDS)].to_numpy(),
                                  table[list(aef.BANDS)].to_numpy())
    assert list(from_groups.poi_id) == list(table.poi_id)
