"""Benchmark: the Earth Engine client — aether vs a sequential and a geemap-style loop.

    .venv/bin/python tests/benchmarks/bench_ee.py --quick   # 1,000 POIs, batches of 125
    .venv/bin/python tests/benchmarks/bench_ee.py           # 20,000 POIs × 2 radii

What is measured is the *client*: the emulator (``aether emulator serve``, its own process,
over the sample city's tiles) runs with ``--server-time``, so each reduction is computed once,
in a warm-up pass off the clock, and every timed request is answered from that result after
``--latency`` (the round trip) plus a modelled server time proportional to its work:
``SERVER_S_PER_EECU`` × the emulator's EECU meter (1 ms a feature + 1 µs a band-pixel
reduced). Requests in flight overlap as on Google's servers instead of queueing for this
machine's cores. The constant is a model, not Google's figure: it is the emulator's own CPU
time per EECU-second for these reductions on one core of the development machine (0.026 to
0.029 s, measured from the thread CPU of computed answers in the log, rounded up to 0.03),
i.e. a request takes on "the server" what the emulator needs for it on one dedicated core.
Each warm-up pass prints that measurement again.

- aether: ``get_source("ee")`` — server-side buffers, ``Reducer.sum`` + valid band in the
  UTM crs, ``--batch`` features per ``computeFeatures`` request, each of ``--concurrency``
  in flight (several values: one run each);
- sequential: aether's own graph, one ``getInfo()`` per ``--batch`` features, one at a time
  (what concurrency alone buys);
- naive (geemap-style): per radius, buffers made client-side with geopandas, sent as
  GeoJSON through ``geemap.gdf_to_ee``, one ``reduceRegions(Reducer.mean(), scale=10)
  .getInfo()`` per ``--batch`` features, one at a time.

The two loops run ``--naive-requests`` requests and are extrapolated (they are sequential:
each request costs the same; their ``ee.Initialize`` is timed once, not extrapolated).
Printed and written to ``results/ee.json``: wall time, the client's CPU (this process, all
threads), requests, the modelled server seconds, the floor (latency + server time spread over
the slots in flight), peak requests in flight and a timeline of them (the mean in flight in
each twentieth of the run) from the emulator's log,
for every latency in ``--latency``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import load_now, measured_at, write_results

#: Modelled server seconds per EECU-second of the emulator's meter (see the module doc).
SERVER_S_PER_EECU = 0.03
RADII = [100.0, 200.0]


def random_pois(tiles: Path, n: int, seed: int = 0):
    import geopandas as gpd
    from shapely.geometry import Point

    from aether.io.tiles import read_index

    idx = read_index(tiles)
    w, s = idx.wgs84_west.max(), idx.wgs84_south.max()
    e, nn = idx.wgs84_east.min(), idx.wgs84_north.min()
    pad_x, pad_y = (e - w) * 0.1, (nn - s) * 0.1
    rng = np.random.default_rng(seed)
    lon = rng.uniform(w + pad_x, e - pad_x, n)
    lat = rng.uniform(s + pad_y, nn - pad_y, n)
    return gpd.GeoDataFrame({"poi_id": [f"bench:{i:06d}" for i in range(n)]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


@contextlib.contextmanager
def emulator(tiles: Path, latency: float, server_time: float) -> Iterator[str]:
    """The emulator as its own process; yields its URL. If it dies, the bench ends with its
    stderr (its traceback), not a client retrying into a closed port."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aether", "emulator", "serve", "--tiles", str(tiles),
             "--port", "0", "--latency", str(latency), "--server-time", str(server_time)],
            stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        try:
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError("the emulator did not start")
            yield url
        except BaseException:
            if proc.poll() is not None:
                err.seek(0)
                raise SystemExit(f"the emulator exited ({proc.returncode}):\n{err.read()}"
                                 ) from None
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def emulator_log(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/log", timeout=30) as r:
        return json.load(r)["requests"]


def run_aether(url: str, pois, workdir: Path, batch: int, concurrency: int) -> int:
    from aether.embeddings import get_source

    shutil.rmtree(workdir, ignore_errors=True)  # no checkpoints: every batch is asked for
    src = get_source("ee", workdir=workdir, ee_url=url, ee_project="bench",
                     ee_batch=batch, ee_concurrency=concurrency)
    return len(src.point_means(pois, RADII, 2024))


def _init(url: str) -> None:
    import ee

    ee.Reset()
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, url=url, project="bench")


def run_naive(pois, batch: int, max_requests: int) -> tuple[int, int, int]:
    """geemap-style: client-side buffers, one reduceRegions().getInfo() per batch, in turn.
    Returns (rows, requests done, requests needed); ``ee`` initialised by the caller."""
    import ee
    import geemap

    from aether.core.aef import COLLECTION_ID, utm_epsg

    c = pois.geometry.union_all().centroid
    utm = pois.to_crs(f"EPSG:{utm_epsg(c.x, c.y)}")
    image = (ee.ImageCollection(COLLECTION_ID).filterDate("2024-01-01", "2025-01-01")
             .mosaic())
    chunks = [(r, start) for r in RADII for start in range(0, len(pois), batch)]
    rows = 0
    for r, start in chunks[:max_requests]:
        part = utm.iloc[start:start + batch]
        fc = geemap.gdf_to_ee(part.assign(geometry=part.buffer(r)).to_crs("EPSG:4326"))
        info = image.reduceRegions(collection=fc, reducer=ee.Reducer.mean(),
                                   scale=10).getInfo()
        rows += len(info["features"])
    return rows, min(max_requests, len(chunks)), len(chunks)


def run_sequential(pois, batch: int, max_requests: int) -> tuple[int, int, int]:
    """aether's own graph, but one getInfo() per batch in turn (no concurrency); ``ee``
    initialised by the caller."""
    from aether.embeddings.earthengine.source import make_batches, reduce_regions_graph

    batches = make_batches(pois, RADII, 2024, batch)
    rows = 0
    for b in batches[:max_requests]:
        rows += len(reduce_regions_graph(b.items, 2024).getInfo()["features"])
    return rows, min(max_requests, len(batches)), len(batches)


def measure(url: str, latency: float, run: Callable[[], tuple[int, int, int]],
            setup: Callable[[], None] | None = None) -> dict:
    """Wall and client CPU of ``setup`` (once) and ``run`` (extrapolated to the requests
    needed), and what the emulator's log saw during them."""
    from aether.testing.emulator import in_flight

    since = time.time()
    t0, c0 = time.perf_counter(), time.process_time()
    if setup is not None:
        setup()
    t1, c1 = time.perf_counter(), time.process_time()
    rows, done, needed = run()
    scale = needed / done
    wall = t1 - t0 + (time.perf_counter() - t1) * scale
    cpu = c1 - c0 + (time.process_time() - c1) * scale
    log = [e for e in emulator_log(url) if e["start"] >= since and "server_ms" in e]
    server = [e["server_ms"] / 1000 for e in log if e["server_ms"] > 0]
    flight = in_flight(log, since=since)
    return {"rows": rows * scale, "requests": len(server) * scale, "requests_run": len(server),
            "wall_s": wall, "client_cpu_s": cpu,
            "server_s": sum(server) * scale, "served_s": [latency + s for s in server],
            "computed": sum(1 for e in log if not e["cached"]), "late": sum(
                1 for e in log if "late_ms" in e),
            "peak_in_flight": flight["peak"], "timeline": flight["timeline"],
            "step_s": flight["step_s"], "extrapolated": scale, "load": load_now()}


def floor_s(served: list[float], slots: int, scale: float) -> float:
    """Least wall time ``slots`` in flight can take for requests of these durations: the
    total spread over the slots, or the longest one."""
    return max(sum(served) * scale / slots, max(served, default=0.0))


def calibration(url: str) -> dict:
    """The emulator's thread CPU per EECU-second over the answers it computed."""
    rows = [e for e in emulator_log(url) if e.get("cpu_ms") and e.get("eecu")]
    cpu, eecu = sum(e["cpu_ms"] for e in rows) / 1000, sum(e["eecu"] for e in rows)
    return {"answers": len(rows), "cpu_s": cpu, "eecu_s": eecu,
            "cpu_s_per_eecu": cpu / eecu if eecu else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1,000 POIs in batches of 125 (16 requests a run)")
    ap.add_argument("--pois", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000, help="features per request, all loops")
    ap.add_argument("--latency", type=float, nargs="+", default=[0.1, 0.3],
                    help="seconds of round trip added to every compute request")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16],
                    help="aether's requests in flight, one run each")
    ap.add_argument("--server-time", type=float, default=SERVER_S_PER_EECU,
                    help="modelled server seconds per EECU-second")
    ap.add_argument("--naive-requests", type=int, default=2,
                    help="requests the two loops actually run; the rest is extrapolated")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ee.json")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "aether-bench")
    args = ap.parse_args()
    if args.quick:
        args.pois, args.batch = 1000, 125

    import dask  # noqa: F401  (imports outside the timed runs)
    import ee  # noqa: F401
    import geemap  # noqa: F401

    from aether.sample.city import ensure_sample

    tiles = ensure_sample(args.data_dir).tiles
    pois = random_pois(tiles, args.pois)
    work = args.data_dir / "bench-ee-work"
    n_req = -(-args.pois * len(RADII) // args.batch)
    print(f"{args.pois:,} POIs × {len(RADII)} radii = {args.pois * len(RADII):,} buffers, "
          f"{args.batch:,} a request (~{n_req} requests); server time modelled as "
          f"{args.server_time:g} s per EECU-second of the emulator's meter, answers computed "
          "once off the clock")
    loops = {"sequential": run_sequential, "naive": run_naive}
    runs, calib = [], []
    for latency in args.latency:
        with emulator(tiles, latency, args.server_time) as url:
            # warm-up, off the clock: every answer the timed runs ask for is computed once
            run_aether(url, pois, work, args.batch, max(args.concurrency))
            for fn in loops.values():
                _init(url)
                fn(pois, args.batch, args.naive_requests)
            calib.append(calibration(url))
            c = calib[-1]
            print(f"latency {latency * 1000:.0f} ms — warm-up computed {c['answers']} answers: "
                  f"{c['cpu_s']:.1f} s emulator CPU for {c['eecu_s']:.1f} EECU-s = "
                  f"{c['cpu_s_per_eecu']:.4f} s per EECU-s (model: {args.server_time:g})")
            for k in args.concurrency:
                m = measure(url, latency, lambda k=k: (
                    run_aether(url, pois, work, args.batch, k), 1, 1))
                runs.append({"method": "aether", "latency_s": latency, "concurrency": k,
                             **m, "floor_s": floor_s(m["served_s"], k, 1.0)})
            for name, fn in loops.items():
                m = measure(url, latency,
                            lambda fn=fn: fn(pois, args.batch, args.naive_requests),
                            setup=lambda: _init(url))
                runs.append({"method": name, "latency_s": latency, "concurrency": 1, **m,
                             "floor_s": floor_s(m["served_s"], 1, m["extrapolated"])})
            _print(runs, latency)
    for r in runs:
        del r["served_s"]
    if any(r["computed"] or r["late"] for r in runs):
        print("note: some timed answers were computed or late (see 'computed', 'late')")
    write_results(args.out, {
        "pois": args.pois, "radii": RADII, "batch": args.batch, "quick": args.quick,
        "server_s_per_eecu": args.server_time, "naive_requests": args.naive_requests,
        "calibration": calib, "runs": runs, **measured_at()})


def _print(runs: list[dict], latency: float) -> None:
    rows = [r for r in runs if r["latency_s"] == latency]
    base = {r["method"]: r["wall_s"] for r in rows if r["method"] != "aether"}
    print(f"{'':>16}{'wall s':>9}{'floor s':>9}{'client CPU s':>13}{'requests':>9}"
          f"{'server s':>9}{'peak':>6}  vs sequential / naive   in flight over the run")
    for r in rows:
        label = (f"aether ×{r['concurrency']}" if r["method"] == "aether" else r["method"])
        if r["method"] == "aether":
            ratio = (f"{base['sequential'] / r['wall_s']:5.1f}× / "
                     f"{base['naive'] / r['wall_s']:5.1f}×")
        else:
            ratio = f"(extrapolated ×{r['extrapolated']:g})"
        print(f"{label:>16}{r['wall_s']:>9.1f}{r['floor_s']:>9.1f}{r['client_cpu_s']:>13.1f}"
              f"{r['requests']:>9.0f}{r['server_s']:>9.1f}{r['peak_in_flight']:>6}  {ratio:<22}  "
              + " ".join(f"{v:g}" for v in r["timeline"]))


if __name__ == "__main__":
    main()
