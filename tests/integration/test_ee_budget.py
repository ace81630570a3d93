"""An Earth Engine budget for a whole run, and Earth Engine's own quota, end to end.

Three cities of sample-city POIs go through the ``ee`` source's export route against the
loopback emulator (the genuine ee client; the emulator reports a deterministic
``batchEecuUsageSeconds`` per task from the pixels and features it reduced). The CLI runs
as subprocesses; what was started is read from the emulator's own operations and log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import yaml

from aether.testing.emulator import Emulator, Faults, running

NAMES = ("Alpha", "Bravo", "Charlie")


@pytest.fixture(scope="module")
def pois(sample_extract: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three disjoint sets of 20 sample-city POIs."""
    d = tmp_path_factory.mktemp("budget-pois")
    allp = gpd.read_parquet(sample_extract / "pois.parquet")
    out = []
    for i, name in enumerate(NAMES):
        p = d / f"{name.lower()}.parquet"
        allp.iloc[i::7].head(20).reset_index(drop=True).to_parquet(p)
        out.append(p)
    return out


def run_file(path: Path, pois: list[Path], url: str, exports: Path | None,
             ee: dict[str, object] | None = None) -> Path:
    opts: dict[str, object] = {"ee_url": url, "ee_project": "budget-project",
                               "ee_backoff": 0.01, "ee_batch": 10, "ee_poll": 0.05}
    if exports is not None:
        opts |= {"export": "gcs://bucket/aether", "export_read": f"file://{exports}/gcs/bucket"}
    body = {"data_dir": "data", "years": [2024], "radii": [100, 200],
            "source": {"name": "ee", "options": opts}, "ee": {"concurrency": 1, **(ee or {})},
            "cities": [{"name": n, "pois": f"file:{p}"} for n, p in zip(NAMES, pois, strict=False)]}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def aether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aether", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def report(data: Path, proc: subprocess.CompletedProcess[str]) -> dict:
    name = proc.stdout.split("report: ")[1].split()[0].rsplit("/", 1)[1]
    return json.loads((data / "runs" / name).read_text())


def eecu(emu: Emulator) -> list[float]:
    return [op["metadata"]["batchEecuUsageSeconds"] for op in emu.operations.values()]


def test_the_emulator_reports_deterministic_usage(pois, sample_city, tmp_path):
    """Same work, same usage; more pixels, more usage (the model the budget tests use)."""
    costs = []
    for k in range(2):
        emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / f"x{k}")
        (tmp_path / f"r{k}").mkdir()
        with running(emu) as url:
            rf = run_file(tmp_path / f"r{k}" / "r.yaml", pois[:1], url, emu.exports)
            assert aether("run", rf).returncode == 0
        costs.append(sorted(eecu(emu)))
    assert costs[0] == costs[1] and len(costs[0]) == 4  # 20 POIs × 2 radii, 10 per task
    assert all(c > 0 for c in costs[0])


def test_a_run_stops_at_its_budget_and_the_next_run_finishes(pois, sample_city, tmp_path):
    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports")
    data = tmp_path / "data"
    with running(emu) as url:
        # what one city costs, measured on its own first (same emulator, same pricing)
        (tmp_path / "probe").mkdir()
        probe = run_file(tmp_path / "probe" / "r.yaml", pois[:1], url, emu.exports)
        assert aether("run", probe).returncode == 0
        city = sum(eecu(emu))
        started = len(emu.operations)

        budget_h = 1.5 * city / 3600
        rf = run_file(tmp_path / "r.yaml", pois, url, emu.exports,
                      {"max_eecu_hours": budget_h})
        first = aether("run", rf)
        assert first.returncode == 3, first.stderr
        rep = report(data, first)
        assert rep["cities_left"] == ["Bravo", "Charlie"]
        assert "budget reached: left for the next run: Bravo, Charlie" in first.stdout
        status = {t["city"]: t["status"] for t in rep["tasks"]}
        assert status == {"Alpha": "done", "Bravo": "budget reached",
                          "Charlie": "budget reached"}
        # every task it started finished and was counted; none started past the budget
        costs = eecu(emu)[started:]
        assert len(costs) < 8
        assert rep["eecu_hours"] == pytest.approx(sum(costs) / 3600)
        mean = sum(costs) / len(costs)
        assert sum(costs) - mean <= budget_h * 3600 < sum(costs) + mean
        ledger = [json.loads(line) for line in
                  (data / "runs" / f"{rep['run_id']}.eecu.jsonl").read_text().splitlines()]
        assert sorted(r["eecu_s"] for r in ledger) == sorted(costs)
        assert (data / "alpha" / "2024" / "poi_embeddings.parquet").is_file()
        assert not (data / "charlie" / "2024" / "poi_embeddings.parquet").exists()

        second = aether("run", rf, "--max-eecu-hours", "10")
        assert second.returncode == 0, second.stderr
        status = {t["city"]: t["status"] for t in report(data, second)["tasks"]}
        assert status == {"Alpha": "up to date", "Bravo": "done", "Charlie": "done"}
    # Bravo's finished batches were kept: 4 tasks a city, never one started twice
    assert len(emu.operations) - started == 12
    for name in ("bravo", "charlie"):
        emb = pd.read_parquet(data / name / "2024" / "poi_embeddings.parquet")
        assert len(emb) == 40 and not emb.duplicated(["poi_id", "radius_m"]).any()


def test_a_budget_needs_the_export_route(pois, tmp_path):
    rf = run_file(tmp_path / "r.yaml", pois, "http://127.0.0.1:9", None, {"max_eecu_hours": 1})
    proc = aether("run", rf)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "ee_max_eecu_hours needs export" in proc.stderr


def test_an_exhausted_monthly_quota_stops_the_run_at_once(pois, sample_city, tmp_path):
    """The 3rd compute request meets a monthly cap: never retried, no other city asks."""
    emu = Emulator(tiles=sample_city.tiles, faults=Faults(schedule={2: "quota_month"}))
    with running(emu) as url:
        rf = run_file(tmp_path / "r.yaml", pois, url, None)
        proc = aether("run", rf)
    assert proc.returncode == 3, proc.stderr
    rep = report(tmp_path / "data", proc)
    assert rep["cities_left"] == list(NAMES)
    assert all("Earth Engine quota exhausted: Quota exceeded" in t["error"]
               for t in rep["tasks"])
    compute = [e for e in emu.log if e.get("route") in ("table:computeFeatures", "value:compute")]
    assert compute[-1].get("fault") == "quota_month"  # nothing was asked after it
    assert len(compute) == 3


def test_extract_alone_exits_3_with_one_line(pois, sample_city, tmp_path):
    emu = Emulator(tiles=sample_city.tiles, faults=Faults(schedule={1: "quota_month"}))
    with running(emu) as url:
        proc = aether("extract", "--pois", pois[0], "--no-geocode", "--source", "ee",
                      "--ee-url", url, "--ee-project", "p", "--data-dir", tmp_path / "d",
                      "--radius", "100")
    assert proc.returncode == 3
    assert proc.stderr.startswith("aether: error: Earth Engine quota exhausted")
    assert proc.stderr.count("\n") == 1
