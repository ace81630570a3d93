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
    want = [i for i in np.argsort(-(v @ q)) if i != pos][:5]  # the example itself left out
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


def test_similar_returns_the_example_itself_only_when_asked(sample_runs, cli) -> None:
    city_dir, names, data_root = sample_runs
    grid = pd.read_parquet(city_dir / "aether" / names[1] / "grid_50m.parquet")
    v = np.array(grid[[c for c in grid.columns if re.fullmatch(r"E\d{3}", c)]], np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)

    def ties_of(i: int) -> int:  # cells within 0.0005 of the best, the example not counted
        cos = np.delete(v @ v[i], i)
        return int(np.count_nonzero(cos >= np.nanmax(cos) - 5e-4))

    # an example whose best matches tie, so the note has something to count
    example = next(i for i in range(0, len(v), 7) if ties_of(i) > 1)
    lon, lat = Transformer.from_crs("EPSG:32635", "EPSG:4326", always_xy=True).transform(
        grid["x"].iloc[example], grid["y"].iloc[example])
    at = ["--at", f"{lon:.7f},{lat:.7f}"]
    base = ["similar", "--city", "Helsinki", "--model", names[1], "--k", "3",
            "--data-dir", str(data_root)]
    rank = r"^\s+\d+\. (-?\d\.\d{3})\s+(-?[\d.]+),(-?[\d.]+)"
    out = cli(*base, *at).stdout
    without = re.findall(rank, out, flags=re.M)
    with_ = re.findall(rank, cli(*base, *at, "--include-examples").stdout, flags=re.M)
    def here(la: str, lo: str) -> bool:
        return abs(float(la) - lat) < 2e-5 and abs(float(lo) - lon) < 2e-5

    assert with_[0][0] == "1.000" and here(with_[0][1], with_[0][2])
    assert not any(here(la, lo) for _, la, lo in without)
    assert without[0] == with_[1]  # the rest in the same order
    # how many cells tie with the best shown, said in words, the example itself not counted
    assert f"note: {ties_of(example)} cells tie with the best (within 0.0005)" in out
