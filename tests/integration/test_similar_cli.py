"""aether similar through the real CLI: the places it prints are those numpy ranks first."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from pyproj import Transformer


def test_similar_at_a_place_matches_brute_force(sample_runs, cli) -> None:
    city_dir, names, data_root = sample_runs
    grid = pd.read_parquet(city_dir / "aether" / names[1] / "grid_50m.parquet")
    cols = [c for c in grid.columns if re.fullmatch(r"E\d{3}", c)]
    v = grid[cols].to_numpy(np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    pos, neg = 100, 400  # two cells by row: one to be like, one to be unlike
    lon, lat = Transformer.from_crs("EPSG:32635", "EPSG:4326", always_xy=True).transform(
        grid["x"].to_numpy(), grid["y"].to_numpy())
    q = 2 * v[pos] - v[neg]
    q /= np.linalg.norm(q)
    want = np.argsort(-(v @ q))[:5]
    r = cli("similar", "--city", "Helsinki", "--model", names[1], "--k", "5",
            "--at", f"{lon[pos]:.7f},{lat[pos]:.7f}", "--not", f"{lon[neg]:.7f},{lat[neg]:.7f}",
            "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    got = re.findall(r"^\s+\d+\. (-?\d\.\d{3})\s+(-?[\d.]+),(-?[\d.]+)", r.stdout, flags=re.M)
    assert len(got) == 5
    np.testing.assert_allclose([float(s) for s, _, _ in got], (v @ q)[want], atol=6e-4)
    np.testing.assert_allclose([float(la) for _, la, _ in got], lat[want], atol=2e-5)


def test_similar_refuses_a_place_off_the_grid(sample_runs, cli) -> None:
    _, _, data_root = sample_runs
    r = cli("similar", "--city", "Helsinki", "--at", "0,0", "--data-dir", str(data_root))
    assert r.returncode == 2 and "outside the encoded grid" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
