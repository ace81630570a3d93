"""encode: window means at the trained scale, the head applied to real tables, bad models."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from aether.core import zonal
from aether.core.aef import BANDS
from aether.ml.encode import AETHER_COLUMNS, grid_window_means


def _cell_constant_raster(n_cells: int, cell_px: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 10 m raster constant within each cell, with some nodata cells."""
    rng = np.random.default_rng(seed)
    cells = rng.normal(size=(n_cells, n_cells, len(BANDS))).astype(np.float32)
    cells[rng.random((n_cells, n_cells)) < 0.1] = np.nan
    return np.repeat(np.repeat(cells, cell_px, 0), cell_px, 1), cells


def test_window_means_equal_exact_circle_means_of_the_pixels() -> None:
    """On a raster constant within each cell, the window mean over cell means must equal the
    exact pixel-level circle mean: the cell weights are exact coverage times valid pixels."""
    cell_px, n = 5, 12  # 50 m cells of 10 m pixels
    pixels, cells = _cell_constant_raster(n, cell_px, seed=3)
    x0, y0 = 385_000.0, 6_673_000.0  # north-up, UTM 35N
    block = zonal.PixelBlock(pixels, x0, y0, 10.0, -10.0)
    # the grid table as `aether grid` writes it: centre, mean, valid pixel count
    xe = x0 + np.arange(n + 1) * 50.0
    ye = y0 - np.arange(n + 1) * 50.0
    m = zonal.finalize_area(zonal.grid_partial_sums(block, xe, ye), 25.0)
    xc, yc = np.meshgrid((xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2)
    grid = pd.DataFrame(m.mean, columns=list(BANDS))
    grid["weight"], grid["x"], grid["y"] = m.weight, xc.ravel(), yc.ravel()
    grid = grid.sample(frac=1.0, random_state=0)  # row order must not matter
    got = grid_window_means(grid, 100.0)
    want = zonal.buffer_means(block, grid["x"].to_numpy(), grid["y"].to_numpy(), 100.0)
    ok = np.isfinite(want.mean[:, 0])
    assert ok.sum() > 100
    np.testing.assert_allclose(got.mean[ok], want.mean[ok], atol=2e-5)
    np.testing.assert_allclose(got.valid_fraction, want.valid_fraction, atol=1e-6)
    assert np.isnan(got.mean[~ok]).all()
    assert np.isnan(cells).any()  # the fixture does exercise masked cells


@pytest.fixture(scope="module")
def encoded(sample_runs):
    return sample_runs


def test_encode_writes_unit_vectors_and_keeps_masked_rows(encoded, cli) -> None:
    city_dir, runs, data_root = encoded
    r = cli("encode", "--city", "Helsinki", "--model", runs[0], "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    out = city_dir / "aether" / runs[0]
    pois = pd.read_parquet(out / "pois.parquet")
    emb = pd.read_parquet(city_dir / "poi_embeddings.parquet")
    assert len(pois) == int(np.isclose(emb["radius_m"], 100.0).sum())
    vec = pois[list(AETHER_COLUMNS)].to_numpy()
    ok = np.isfinite(vec).all(1)
    assert ok.sum() > 0.9 * len(pois)
    np.testing.assert_allclose(np.linalg.norm(vec[ok], axis=1), 1.0, atol=1e-5)
    import geopandas as gpd

    grid = gpd.read_parquet(out / "grid_50m.parquet")
    src = pd.read_parquet(city_dir / "grid_embeddings_50m.parquet")
    assert len(grid) == len(src) and list(grid["cell_id"]) == list(src["cell_id"])
    g = grid[list(AETHER_COLUMNS)].to_numpy()
    masked = ~np.isfinite(g).all(1)
    assert (grid.loc[masked, "valid_fraction"] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(g[~masked], axis=1), 1.0, atol=1e-5)
    assert f"{len(pois)} POIs" in r.stdout


def _copy_run(city_dir, run: str, tmp_path, **changes):
    dst = tmp_path / f"{run}_changed"
    shutil.copytree(city_dir / "models" / run, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(("changes", "needle"), [
    ({"city": "tallinn"}, "trained for tallinn, not helsinki"),
    ({"base_radius_m": 300.0}, "needs 300 m buffer means"),
    ({"base_radius_m": -45.0},  # an imported square-window model: the remedy is --window
     r"needs 9×9 px square buffer means; .* re-run `aether extract --window square:4`"),
])
def test_model_for_another_city_or_radius_is_one_line_exit_2(encoded, cli, tmp_path, changes,
                                                              needle) -> None:
    city_dir, runs, data_root = encoded
    bad = _copy_run(city_dir, runs[0], tmp_path, **changes)
    r = cli("encode", "--city", "Helsinki", "--model", str(bad), "--data-dir", str(data_root))
    assert r.returncode == 2
    assert re.search(needle, r.stderr) and len(r.stderr.strip().splitlines()) == 1
    assert not (city_dir / "aether" / bad.name).exists()


def test_encode_pois_only_needs_no_grid(sample_extract, cli, tmp_path) -> None:
    """`aether encode --pois` on a fresh extract that has no grid: the POI table alone."""
    from aether.io.store import CityStore
    from aether.io.tables import read_table

    data = tmp_path / "data"
    r = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    store = CityStore.at(data / "helsinki" / "2024")
    cached = CityStore.at(sample_extract).text_embeddings  # the same texts: skip re-encoding
    if cached.is_file():
        shutil.copy(cached, store.text_embeddings)
    r = cli("train", "--city", "Helsinki", "--epochs", "1", "--run", "p", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert store.grids() == []
    # without --pois a city with no grid is refused, and the hint names --pois
    r = cli("encode", "--city", "Helsinki", "--model", "p", "--data-dir", str(data))
    assert r.returncode == 2 and "aether encode --pois" in r.stderr, r.stderr
    r = cli("encode", "--city", "Helsinki", "--model", "p", "--pois", "--cell", "50m",
            "--data-dir", str(data))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "takes no grid cells" in r.stderr

    r = cli("encode", "--city", "Helsinki", "--model", "p", "--pois", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    pois = read_table(store.pois, ["poi_id"], "pois")
    emb = read_table(store.poi_embeddings, ["poi_id", "radius_m"], "poi_embeddings")
    at_base = emb[np.isclose(emb["radius_m"], 100.0)]  # the default preset's base window
    out = store.dir / "aether" / "p"
    assert sorted(p.name for p in out.iterdir()) == ["pois.parquet"]
    enc = pd.read_parquet(out / "pois.parquet")
    assert len(enc) == len(at_base) == len(pois) > 1000
    assert f"p: {len(enc)} POIs (" in r.stdout and "cells" not in r.stdout
    assert set(enc["poi_id"]) == set(pois["poi_id"])
    vec = enc[list(AETHER_COLUMNS)].to_numpy()
    ok = enc["valid_fraction"].to_numpy() > 0
    assert ok.mean() > 0.95 and np.isfinite(vec[ok]).all()
    np.testing.assert_allclose(np.linalg.norm(vec[ok], axis=1), 1.0, atol=1e-5)
    # and no grid was made or encoded on the way
    assert store.grids() == [] and not list(store.dir.rglob("grid_*"))
