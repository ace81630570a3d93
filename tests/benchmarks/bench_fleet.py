"""Scheduled runs as a fleet: many cities, one after another vs on a local Dask cluster.

    .venv/bin/python tests/benchmarks/bench_fleet.py              # 24 shards + 200 small cities
    .venv/bin/python tests/benchmarks/bench_fleet.py --quick      # 8 shards + 16 small cities

Cities: the real OpenStreetMap POIs of Singapore (``/work/shared/data``, ODbL; the whole
island, or its centre with ``--quick``) cut into ``--cities`` longitude strips, and
``--small`` cities of 20 POIs each, all over one generated raster in the AlphaEarth format
(``synthetic_tiles_for_bbox``; the values are synthetic). Each mode runs ``aether run`` as a
subprocess on its own data directory:

- **sequential**: ``--scheduler threads`` (the cities one after another in the client, its
  Dask work on the client's threads);
- **cluster ×1 / ×2**: a ``dask scheduler`` and 1 or 2 ``dask worker --nthreads 1`` processes
  on loopback; ``aether run --scheduler tcp://…`` sends one task per (city, year, step);
- **cluster ×2, s3**: the same on a data directory in an S3 bucket (moto's S3 server on
  loopback, in this process: its CPU is in neither figure), every step pulling its city-year
  into a mirror and pushing what it wrote (``io.remote``).

Measured: wall time and cities per hour; CPU seconds of the client (``aether run``) and of the
workers (psutil, their whole process trees), so the client's share of all CPU; worker
utilisation = worker CPU / (wall × workers); how the tasks spread (the report's ``worker``
per step); whether every mode's tables are identical. Then the Earth Engine route on the
emulator with 300 ms latency on every request and ``ee: {concurrency: 2}`` on the 2-worker
cluster: the requests in flight over time (from the emulator's log), never above the cap.
Results go to ``--out``; ``render_docs.py`` renders them into docs/benchmarks.md, with a
projection to 200 cities on 20 nodes computed from these measured costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import measured_at, write_results

SHP = "/vsizip//work/shared/data/singapore_osm_pois_2023-01-24.zip/poi_osm_sg-2023-01-24"
QUICK = (103.80, 1.27, 103.91, 1.33)
#: The whole island (the Singapore bbox of ../shared/data/README.md): 27,568 POIs.
WHOLE = (103.59, 1.15, 104.10, 1.48)
SMALL_POIS = 20
EE_LATENCY_S = 0.3
EE_CAP = 2


def make_cities(work: Path, n_strips: int, n_small: int,
                bbox: tuple[float, float, float, float] = QUICK) -> tuple[list[dict], Path]:
    """POI files of the cities (strips of the POIs in ``bbox``, then small ones) and the
    raster under them."""
    import geopandas as gpd

    from aether.sample.city import synthetic_tiles_for_bbox

    raw = gpd.read_file(SHP)
    w, s, e, n = bbox
    pois = raw.cx[w:e, s:n].sort_values("osm_id")[["osm_id", "name", "category", "detail",
                                                    "geometry"]].reset_index(drop=True)
    tiles = synthetic_tiles_for_bbox(work / "tiles", tuple(pois.total_bounds), year=2024,
                                     tile_px=2048)
    order = np.argsort(pois.geometry.x.to_numpy(), kind="stable")
    cities = []
    for i, part in enumerate(np.array_split(order, n_strips)):
        cities.append(_city(work, f"strip {i:02d}", pois.iloc[np.sort(part)]))
    rng = np.random.default_rng(0)
    for i in range(n_small):
        centre = rng.integers(len(pois))
        d = (pois.geometry.x - pois.geometry.x[centre]) ** 2 + \
            (pois.geometry.y - pois.geometry.y[centre]) ** 2
        cities.append(_city(work, f"small {i:03d}", pois.iloc[np.sort(np.argsort(
            d.to_numpy())[:SMALL_POIS])]))
    return cities, tiles


def _city(work: Path, name: str, pois: object) -> dict:
    path = work / "pois" / f"{name.replace(' ', '_')}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pois.to_parquet(path)  # type: ignore[attr-defined]
    return {"name": name, "pois": f"file:{path}", "n": len(pois)}  # type: ignore[arg-type]


def run_file(path: Path, cities: list[dict], source: dict, ee: dict | None = None) -> Path:
    import yaml

    body = {"data_dir": "data", "years": [2024], "radii": [100, 200],
            "poi_options": {"category_column": "detail", "top_category_column": "category"},
            "source": source, "cities": [{"name": c["name"], "pois": c["pois"]} for c in cities]}
    if ee:
        body["ee"] = ee
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@contextlib.contextmanager
def cluster(workers: int) -> Iterator[tuple[str, list]]:
    """A scheduler and ``workers`` single-threaded workers; (address, worker processes)."""
    import psutil

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    sched_file = tmp / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        t0 = time.monotonic()
        while not sched_file.is_file():
            assert time.monotonic() - t0 < 60, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(workers):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--no-nanny", "--no-dashboard", "--local-directory", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(workers, timeout=60)
        yield address, [psutil.Process(p.pid) for p in procs[1:]]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a worker still in a task: no need to wait
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu(procs: list) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def run_mode(rf: Path, scheduler: str, workers: list, data_dir: str | None = None) -> dict:
    """One ``aether run`` (a fresh data dir: the run file's, or ``data_dir``): wall, client
    CPU, workers' CPU, the report."""
    shutil.rmtree(rf.parent / "data", ignore_errors=True)
    env = dict(os.environ)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w0 = _cpu(workers)
    t0 = time.perf_counter()
    where = ["--data-dir", data_dir] if data_dir else []
    proc = subprocess.run([sys.executable, "-m", "aether", "run", str(rf), "--scheduler",
                           scheduler, *where], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"aether run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    worker_cpu = _cpu(workers) - w0
    report = json.loads(Path(proc.stdout.split("report: ")[1].split()[0]).read_text())
    spread: dict[str, int] = {}
    for t in report["tasks"]:
        spread[t.get("worker") or "client"] = spread.get(t.get("worker") or "client", 0) + 1
    return {"wall_s": round(wall, 2), "client_cpu_s": round(client, 2),
            "worker_cpu_s": round(worker_cpu, 2),
            "client_share": round(client / (client + worker_cpu), 4),
            "utilisation": round(worker_cpu / (wall * len(workers)), 3) if workers else None,
            "tasks_per_worker": sorted(spread.values(), reverse=True),
            "load": round(os.getloadavg()[0], 1)}


def tables(data: Path) -> dict[str, str]:
    """The checksum of every city's embedding table (what "identical" compares)."""
    from aether.io.tables import sha256_file

    return {p.parent.parent.name: sha256_file(p)
            for p in sorted(data.glob("*/2024/poi_embeddings.parquet"))}


@contextlib.contextmanager
def loopback_s3(bucket: str) -> Iterator[object]:
    """An S3 service on 127.0.0.1 with an empty bucket, the environment (this process's,
    so the workers started after it inherit it) pointing s3fs at it; yields a boto3 client."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def s3_tables(client: object, bucket: str, prefix: str) -> dict[str, str]:
    """``tables`` of a data directory in a bucket."""
    import hashlib

    out = {}
    pages = client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
        Bucket=bucket, Prefix=prefix)
    for key in sorted(o["Key"] for p in pages for o in p.get("Contents", [])):
        if key.endswith("/2024/poi_embeddings.parquet"):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
            out[key.split("/")[-3]] = hashlib.sha256(body).hexdigest()
    return out


def ee_in_flight(work: Path, cities: list[dict], tiles: Path) -> dict:
    """The EE route on the 2-worker cluster at 300 ms latency, capped at ``EE_CAP``."""
    from aether.testing.emulator import Emulator, Faults, in_flight, running

    emu = Emulator(tiles=tiles, faults=Faults(latency=EE_LATENCY_S))
    with running(emu) as url, cluster(2) as (address, workers):
        source = {"name": "ee", "options": {"ee_url": url, "ee_project": "bench",
                                            "ee_batch": 10, "ee_concurrency": 4}}
        rf = run_file(work / "ee" / "r.yaml", cities, source, {"concurrency": EE_CAP})
        res = run_mode(rf, address, workers)
    flight = in_flight(emu.log, ("table:computeFeatures",))
    return {**res, "requests": flight["requests"], "cap": EE_CAP, "peak_in_flight": flight["peak"],
            "latency_s": EE_LATENCY_S, "cities": len(cities)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 strips and 16 small cities")
    ap.add_argument("--cities", type=int, default=24, help="longitude strips of the POIs")
    ap.add_argument("--small", type=int, default=200, help="cities of 20 POIs each")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "aether-bench-fleet"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fleet.json"))
    args = ap.parse_args()
    n_strips, n_small = (8, 16) if args.quick else (args.cities, args.small)
    work = Path(args.work)
    cities, tiles = make_cities(work, n_strips, n_small, QUICK if args.quick else WHOLE)
    print(f"# {len(cities)} cities ({n_strips} strips of {sum(c['n'] for c in cities[:n_strips]):,}"
          f" POIs, {n_small} of {SMALL_POIS}), 2 radii", flush=True)
    rf = run_file(work / "cog" / "r.yaml", cities, {"name": "cog",
                                                     "options": {"tiles": str(tiles)}})
    modes: dict[str, dict] = {}
    modes["sequential"] = run_mode(rf, "threads", [])
    reference = tables(rf.parent / "data")
    for k in (1, 2):
        with cluster(k) as (address, workers):
            modes[f"cluster x{k}"] = run_mode(rf, address, workers)
        modes[f"cluster x{k}"]["tables_equal"] = tables(rf.parent / "data") == reference
    with loopback_s3("aether-bench") as s3, cluster(2) as (address, workers):
        modes["cluster x2, s3"] = run_mode(rf, address, workers, "s3://aether-bench/data")
        modes["cluster x2, s3"]["tables_equal"] = s3_tables(s3, "aether-bench", "data/") \
            == reference
    for name, m in modes.items():
        m["cities_per_hour"] = round(3600 * len(cities) / m["wall_s"])
        print(f"{name}: {m['wall_s']:.1f} s wall, {m['cities_per_hour']} cities/h, client "
              f"{m['client_cpu_s']:.1f} s CPU ({100 * m['client_share']:.1f}% of all), "
              f"workers {m['worker_cpu_s']:.1f} s, tasks {m['tasks_per_worker']}", flush=True)
    ee = ee_in_flight(work, cities[n_strips:n_strips + 8], tiles)
    print(f"earth engine: {ee['requests']} requests at {ee['latency_s']} s latency, peak "
          f"{ee['peak_in_flight']} in flight (cap {ee['cap']}), {ee['wall_s']:.1f} s", flush=True)
    write_results(args.out, {"cities": len(cities), "strips": n_strips, "small": n_small,
                             "area": "the centre of Singapore" if args.quick else "Singapore",
                             "pois": sum(c["n"] for c in cities), "modes": modes, "ee": ee,
                             **measured_at()})


if __name__ == "__main__":
    main()
