"""`aether run --scheduler`: a run file's cities as tasks on a real Dask cluster (`dask
scheduler` and two `dask worker` processes on loopback), against the same run threaded.

Three cities are three slices of the sample city's real OSM POIs over its tiles, so each
city's table can be compared with the threaded run's byte for byte.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import yaml
from support import (
    FLEET_CITIES,
    REPO,
    fleet_report,
    fleet_tables,
    free_port,
    kill_once_tasks_start,
    on_exports,
    require,
)

require("distributed")


def test_cities_spread_over_the_workers_and_give_the_threaded_tables(
        fleet: Path, dask_cluster, cli, tmp_path: Path) -> None:
    address, _ = dask_cluster(2)
    threads = cli("run", str(fleet), "--data-dir", str(tmp_path / "t"), "--scheduler",
                  "threads")
    assert threads.returncode == 0, threads.stderr
    spread = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert spread.returncode == 0, spread.stderr
    want, got = fleet_tables(tmp_path / "t"), fleet_tables(tmp_path / "c")
    assert sorted(got) == ["alpha", "beta", "gamma"]
    for city in want:
        pd.testing.assert_frame_equal(want[city], got[city])
    rows = fleet_report(spread.stdout)["tasks"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert len({r["worker"] for r in rows}) == 2  # both workers ran cities
    assert all(r["worker"] is None for r in fleet_report(threads.stdout)["tasks"])
    assert "extract 3/3" in spread.stderr  # the progress fed by the cluster

    # a second run does nothing; a changed POI file redoes that city alone
    again = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert again.returncode == 0 and "nothing to do: all 3 tasks up to date" in again.stdout
    beta = tmp_path / "beta.parquet"
    gpd.read_parquet(beta).iloc[:-1].to_parquet(beta)
    changed = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert changed.returncode == 0, changed.stderr
    status = {r["city"]: r["status"] for r in fleet_report(changed.stdout)["tasks"]}
    assert status == {"Alpha": "up to date", "Beta": "done", "Gamma": "up to date"}
    assert len(fleet_tables(tmp_path / "c")["beta"]) == 39

    # `aether run status` reads what the runs left
    st = cli("run", "status", str(fleet), "--data-dir", str(tmp_path / "c"), "--json")
    assert st.returncode == 0, st.stderr
    rows = {r["city"]: r for r in json.loads(st.stdout)}
    assert rows["Beta"]["last"] == "done" and rows["Beta"]["rows"] == 39
    assert rows["Alpha"]["redo"] == "keep, unless its inputs changed"
    (tmp_path / "c" / "gamma" / "2024" / "poi_embeddings.parquet").unlink()
    st = cli("run", "status", str(fleet), "--data-dir", str(tmp_path / "c"), "--json")
    gamma = next(r for r in json.loads(st.stdout) if r["city"] == "Gamma")
    assert gamma["redo"] == "redo: poi_embeddings.parquet missing or changed"


def test_a_killed_worker_changes_nothing(fleet: Path, dask_cluster, cli,
                                         tmp_path: Path) -> None:
    """Worker 0 SIGKILLs itself as it starts any city's extract: Dask runs that task again
    on worker 1, and the tables are the threaded run's."""
    kill = ",".join(f"before:{c.lower()}/2024/extract" for c in FLEET_CITIES)
    address, _ = dask_cluster(2, lambda i: {"AETHER_RUN_KILL_AT": kill} if i == 0 else {})
    threads = cli("run", str(fleet), "--data-dir", str(tmp_path / "t"))
    spread = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert threads.returncode == 0 and spread.returncode == 0, spread.stderr
    rows = fleet_report(spread.stdout)["tasks"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert len({r["worker"] for r in rows}) == 1  # all on the worker left alive
    want, got = fleet_tables(tmp_path / "t"), fleet_tables(tmp_path / "c")
    for city in want:
        pd.testing.assert_frame_equal(want[city], got[city])


def test_a_worker_of_another_version_is_refused(fleet: Path, dask_cluster, cli,
                                               tmp_path: Path) -> None:
    """A worker whose environment holds another aether (its metadata first on its path)."""
    other = tmp_path / "other-aether"
    (other / "aether-9.9.9.dist-info").mkdir(parents=True)
    (other / "aether-9.9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aether\nVersion: 9.9.9\n")
    address, _ = dask_cluster(1, lambda i: {"PYTHONPATH": f"{other}:{REPO}"})
    r = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "aether 9.9.9" in r.stderr, r.stderr
    assert "this client aether" in r.stderr
    assert not list((tmp_path / "c").rglob("*.parquet"))


class _Silent(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_scheduler_that_is_not_one_is_one_line_within_seconds(fleet: Path, cli,
                                                                 tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for address, says in ((f"tcp://127.0.0.1:{server.server_port}", "no Dask handshake"),
                              (f"tcp://127.0.0.1:{free_port()}", "cannot reach")):
            t0 = time.monotonic()
            r = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"),
                    "--scheduler", address)
            assert r.returncode == 2, r.stderr
            assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
            assert time.monotonic() - t0 < 30
    finally:
        server.shutdown()
    assert not list((tmp_path / "c").rglob("*.parquet"))


def in_flight(log: list[dict]) -> int:
    """The most computeFeatures requests the emulator was answering at once."""
    spans = [(e["start"], e["start"] + e["ms"] / 1000) for e in log
             if e.get("route", "").endswith("table:computeFeatures")]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_earth_engine_requests_in_flight_stay_under_one_cap_for_the_cluster(
        fleet: Path, dask_cluster, emulator, ee_server: str, cli, tmp_path: Path) -> None:
    """Three cities on two workers, each asking for 2 requests in flight: the cap of 2 per
    Cloud project holds across the cluster (a distributed Semaphore), not per process."""
    from aether.testing.emulator import Faults

    emulator.faults = Faults(latency=0.3)
    body = yaml.safe_load(fleet.read_text())
    body["source"] = {"name": "ee", "options": {
        "ee_url": ee_server, "ee_project": "demo-project", "ee_batch": 8,
        "ee_concurrency": 2, "ee_backoff": 0.01}}
    fleet.write_text(yaml.safe_dump(body, sort_keys=False))
    address, _ = dask_cluster(2)
    r = cli("run", str(fleet), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert r.returncode == 0, r.stderr
    assert len({row["worker"] for row in fleet_report(r.stdout)["tasks"]}) == 2
    calls = [e for e in emulator.log if e.get("route", "").endswith("table:computeFeatures")]
    assert len(calls) >= 15  # 3 cities × 5 batches of 8 POIs
    assert in_flight(emulator.log) == 2


def test_a_killed_client_leaves_no_export_task_to_start_twice(
        fleet: Path, dask_cluster, sample_city, cli, tmp_path: Path) -> None:
    """SIGKILL the client while its workers have export tasks running: the tasks it sent
    keep running on the workers but start no new Earth Engine task once a new run holds the
    lock; the new run adopts every task already started. One task per batch, ever."""
    from aether.testing.emulator import Emulator, running

    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports", export_delay=1.0)
    address, _ = dask_cluster(2)
    data = tmp_path / "c"
    with running(emu) as url:
        on_exports(fleet, url, emu.exports)
        args = ["run", str(fleet), "--data-dir", str(data), "--scheduler", address]
        kill_once_tasks_start(args, emu.operations)
        started = len(emu.operations)
        again = cli(*args)
        assert again.returncode == 0, again.stderr
    assert started < 12
    # 3 cities × 40 POIs × 1 radius in batches of 10
    assert len(emu.operations) == 12
    assert len({op["metadata"]["description"] for op in emu.operations.values()}) == 12
    for city, emb in fleet_tables(data).items():
        assert len(emb) == 40 and not emb.duplicated(["poi_id", "radius_m"]).any(), city


def test_a_worker_killed_mid_export_leaves_no_task_to_start_twice(
        fleet: Path, dask_cluster, sample_city, tmp_path: Path) -> None:
    """SIGKILL a worker while its city's Earth Engine export tasks run: Dask runs that step
    again on the other worker, which adopts the tasks already started (the task book is in
    the shared data directory) instead of starting them again. One task per batch, ever,
    and the tables are whole."""
    import os
    import signal
    import subprocess
    import sys

    from distributed import Client

    from aether.testing.emulator import Emulator, running

    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports", export_delay=1.0)
    address, _ = dask_cluster(2)
    data = tmp_path / "c"
    with running(emu) as url, Client(address, timeout=30) as watcher:
        on_exports(fleet, url, emu.exports)
        run = subprocess.Popen([sys.executable, "-m", "aether", "run", str(fleet),
                                "--data-dir", str(data), "--scheduler", address],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while len(emu.operations) < 2:
            assert run.poll() is None and time.monotonic() - t0 < 120, "no export started"
            time.sleep(0.02)
        busy = [w for w, keys in watcher.processing().items()
                if any(str(k).startswith("aether-") for k in keys)]
        assert busy, "no worker is running a step"
        pid = watcher.run(os.getpid, workers=busy[:1])[busy[0]]
        started = len(emu.operations)
        os.kill(pid, signal.SIGKILL)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert started < 12
    rows = fleet_report(out)["tasks"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert len(emu.operations) == 12  # 3 cities × 40 POIs × 1 radius in batches of 10
    assert len({op["metadata"]["description"] for op in emu.operations.values()}) == 12
    for city, emb in fleet_tables(data).items():
        assert len(emb) == 40 and not emb.duplicated(["poi_id", "radius_m"]).any(), city
