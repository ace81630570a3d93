"""``aether serve`` at city scale: latency, server CPU and reply bytes against the compute floor.

A generated grid of ``side``² square cells (100 m, 1000² = 1 M by default, 128-d random unit
vectors, 20,000 random POIs) is served by the real app (uvicorn, the same ``CityApp`` and
routes as ``aether serve``) in a subprocess; a trained run encodes the text queries. In that
process, before serving, the compute floor is measured on the same matrix: a bare float32
``X @ q`` and ``np.argpartition`` for the top 10. Then, over HTTP, text queries and "more like
this" clicks at 1, 8 and 32 concurrent clients (p50/p99 of each request's wall time, the
server's CPU per answer from /proc, the reply bytes), and the load test: 2,000 requests
arriving evenly over 60 s, each answered or refused (503), and the server's memory before
and its peak during it.
Writes ``tests/benchmarks/results/serve.json`` for the docs page.

    python tests/benchmarks/bench_serve.py --run DATA/helsinki/2024/models/default
    python tests/benchmarks/bench_serve.py --run ... --browser /usr/bin/chromium  # + the page
    python tests/benchmarks/bench_serve.py --run ... --side 300 --burst 200   # quicker
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from results import measured_at, write_results

CRS = "EPSG:32635"  # UTM 35N: Helsinki
X0, Y0, CELL_M = 370_000.0, 6_650_000.0, 100.0
QUERIES = ["coffee shop", "park", "bus stop", "hotel", "school", "supermarket", "museum",
           "harbour", "church", "library", "restaurant", "playground"]


def city(side: int, dim: int) -> Any:
    """A ``CityIndex`` of side² 100 m cells with random unit vectors and random POIs."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    from aether.query.search import CityIndex

    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(side), np.arange(side))
    x = (X0 + (i.ravel() + 0.5) * CELL_M).astype(float)
    y = (Y0 + (j.ravel() + 0.5) * CELL_M).astype(float)
    boxes = shapely.box(x - CELL_M / 2, y - CELL_M / 2, x + CELL_M / 2, y + CELL_M / 2)
    grid = gpd.GeoDataFrame({"cell_id": [f"{a:.0f}_{b:.0f}" for a, b in zip(x, y, strict=True)],
                             "x": x, "y": y}, geometry=boxes, crs=CRS).to_crs("EPSG:4326")
    v = rng.standard_normal((side * side, dim), dtype=np.float32)
    n = 20_000
    px, py = X0 + rng.random(n) * side * CELL_M, Y0 + rng.random(n) * side * CELL_M
    pois = gpd.GeoDataFrame(
        pd.DataFrame({"poi_id": [f"poi/{k}" for k in range(n)], "name": [f"POI {k}" for k in
                                                                          range(n)],
                      "category": rng.choice(["cafe", "park", "shop", "school"], n),
                      "x": px, "y": py}),
        geometry=gpd.points_from_xy(px, py), crs=CRS).to_crs("EPSG:4326")
    return CityIndex(grid, v, pois, CRS)


def serve_city(args: argparse.Namespace) -> None:
    """The server side: build the state, measure the floor on its matrix, serve."""
    import uvicorn

    from aether.api import Model
    from aether.ml.encode import apply_text
    from aether.query.serve import CityApp, build_panel, listen
    from aether.query.webapp import create_app

    run = Model.load(args.run).run
    apply_text(run, ["warm up"])
    cpu0, t0 = time.process_time(), time.perf_counter()
    idx = city(args.side, run.out_dim)
    panel = build_panel(run.name, idx, idx.vectors, run)
    load = {"load_wall_s": time.perf_counter() - t0, "load_cpu_s": time.process_time() - cpu0}
    # the answers' thread settings (one per answer) hold for the floor too
    state = CityApp("bench", [panel], workers=args.workers, queue=args.queue)
    x = panel.vectors.unit  # the very matrix the answers use
    rng = np.random.default_rng(1)
    times = []
    for _ in range(30):
        q = rng.standard_normal(x.shape[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        t = time.perf_counter()
        s = x @ q
        np.argpartition(-s, 9)[:10]
        times.append(time.perf_counter() - t)
    floor = {"p50_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times)}
    sock, url = listen("127.0.0.1", 0)
    print(json.dumps({"url": url, "floor": floor, "cells": len(idx.grid), "dim": x.shape[1],
                      "heat": list(panel.heat.shape), "model": run.name, **load}), flush=True)
    config = uvicorn.Config(create_app(state), log_level="warning",
                            limit_concurrency=state.workers + state.queue + 64)
    uvicorn.Server(config).run(sockets=[sock])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mem_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client:
    """One keep-alive HTTP connection per thread, or a new one per request (``fresh``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.local = threading.local()

    def get(self, path: str, timeout: float = 60, fresh: bool = False
            ) -> tuple[int, int, float]:
        conn = None if fresh else getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                timeout=timeout)
        t = time.perf_counter()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            return -1, 0, time.perf_counter() - t
        if fresh:
            conn.close()
        return r.status, len(body), time.perf_counter() - t


def paths(kind: str, n: int, side: int, model: str) -> list[str]:
    rng = np.random.default_rng(2)
    if kind == "text":
        return [f"/api/answer?model={model}&q={quote(QUERIES[i % len(QUERIES)])}%20{i}"
                for i in range(n)]
    from pyproj import Transformer

    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(X0 + rng.random(n) * side * CELL_M * 0.98 + CELL_M,
                               Y0 + rng.random(n) * side * CELL_M * 0.98 + CELL_M)
    return [f"/api/answer?model={model}&at={a:.6f},{b:.6f}" for a, b in zip(lon, lat,
                                                                              strict=True)]


def phase(client: Client, pid: int, todo: list[str], clients: int) -> dict[str, Any]:
    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        res = list(pool.map(client.get, todo))
    wall, cpu = time.perf_counter() - t0, _cpu_s(pid) - cpu0
    ok = [r for r in res if r[0] == 200]
    lat = np.array([r[2] for r in ok]) * 1e3
    return {"clients": clients, "requests": len(todo), "answered": len(ok),
            "refused": sum(r[0] == 503 for r in res), "failed": sum(r[0] == -1 for r in res),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "per_s": len(ok) / wall, "server_cpu_ms_per_answer": 1e3 * cpu / max(len(ok), 1),
            "reply_bytes": int(np.median([r[1] for r in ok]))}


def burst(client: Client, pid: int, todo: list[str], seconds: float) -> dict[str, Any]:
    """Requests arriving evenly over ``seconds`` (open loop: each at its time, whatever the
    server does), each with a 30 s timeout."""
    gap = seconds / len(todo)
    rss0 = _mem_mb(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak from here on, not the load's
    out: list[tuple[int, int, float]] = []
    t0 = time.perf_counter()

    def one(i: int) -> None:
        time.sleep(max(0.0, t0 + i * gap - time.perf_counter()))
        out.append(client.get(todo[i], timeout=30, fresh=True))

    with ThreadPoolExecutor(128) as pool:
        list(pool.map(one, range(len(todo))))
    codes = [r[0] for r in out]
    ok = np.array([r[2] for r in out if r[0] == 200]) * 1e3
    refused = np.array([r[2] for r in out if r[0] == 503]) * 1e3
    return {"requests": len(todo), "seconds": seconds, "answered": codes.count(200),
            "refused": codes.count(503), "failed": codes.count(-1),
            "answered_p99_ms": float(np.percentile(ok, 99)) if len(ok) else None,
            "refused_p99_ms": float(np.percentile(refused, 99)) if len(refused) else None,
            "wall_s": time.perf_counter() - t0, "rss_before_mb": rss0,
            "peak_mb": _mem_mb(pid, "VmHWM")}


def browser(url: str, chromium: str, n: int = 10) -> dict[str, Any]:
    """What a person waits for: type a query in the real page (headless Chromium) until the
    heat layer and markers are drawn, ``n`` different queries; and a click on the map."""
    from playwright.sync_api import sync_playwright

    done = ("s => { const e = document.querySelector('#status');"
            " return e.dataset.state === 'done' && e.textContent === s; }")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = b.new_page(viewport={"width": 1280, "height": 720})
        page.goto(url)
        page.wait_for_selector('#status[data-state="ready"]', timeout=120_000)
        times = []
        for i in range(n + 1):
            page.fill("#q", f"{QUERIES[i % len(QUERIES)]} {i}")
            t = time.perf_counter()
            page.click("button[type=submit]")
            page.wait_for_function(done, arg="answered by 1 model(s)", timeout=120_000)
            times.append(time.perf_counter() - t)
        clicks = []
        for i in range(5):
            t = time.perf_counter()
            page.mouse.click(500 + 40 * i, 380)
            page.wait_for_function("() => document.querySelector('#status').dataset.state"
                                   " === 'done'", timeout=120_000)
            clicks.append(time.perf_counter() - t)
        pixels = int(page.get_attribute(".panel", "data-cells") or 0)
        b.close()
    return {"text_p50_ms": 1e3 * float(np.median(times[1:])),  # the first warms the page
            "click_p50_ms": 1e3 * float(np.median(clicks)), "queries": n,
            "coloured_pixels": pixels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained run (its text encoder)")
    ap.add_argument("--side", type=int, default=1000, help="cells per side (1000: 1 M)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--burst", type=int, default=2000, help="requests of the load test")
    ap.add_argument("--browser", default=None, help="Chromium executable: also time the page")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve.json")
    args = ap.parse_args()
    if args.serve:
        serve_city(args)
        return
    cmd = [sys.executable, __file__, "--serve", "--run", str(args.run), "--side",
           str(args.side), "--queue", str(args.queue)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        head = json.loads(proc.stdout.readline())
        host, port = head["url"].split("/")[2].split(":")
        client = Client(host, int(port))
        print(f"{head['cells']:,} cells × {head['dim']}, heat raster {head['heat']}, loaded in "
              f"{head['load_wall_s']:.1f} s; floor p50 {head['floor']['p50_ms']:.1f} ms")
        client.get(paths("text", 1, args.side, head["model"])[0])  # first answers allocate
        rows = []
        for clients in (1, 8, 32):
            for kind in ("text", "like"):
                n = max(30, 4 * clients)
                r = phase(client, proc.pid, paths(kind, n, args.side, head["model"]), clients)
                r.update(kind=kind, vs_floor=r["p50_ms"] / head["floor"]["p50_ms"])
                rows.append(r)
                print(f"  {kind:4} {clients:2} clients: p50 {r['p50_ms']:7.1f} ms  p99 "
                      f"{r['p99_ms']:7.1f} ms  ({r['vs_floor']:.2f}× floor)  {r['per_s']:.1f}/s"
                      f"  server CPU {r['server_cpu_ms_per_answer']:.0f} ms/answer  "
                      f"{r['reply_bytes']:,} B  503: {r['refused']}")
        page = browser(head["url"], args.browser) if args.browser else None
        if page:
            print(f"  the page (Chromium): text query drawn in {page['text_p50_ms']:.0f} ms, a "
                  f"click in {page['click_p50_ms']:.0f} ms (p50)")
        load = burst(client, proc.pid, paths("like", args.burst, args.side, head["model"]), 60)
        print(f"  load test: {load['requests']} requests in {load['seconds']:.0f} s: "
              f"{load['answered']} answered, {load['refused']} refused (503), "
              f"{load['failed']} failed; memory {load['rss_before_mb']:,.0f} MB before, peak "
              f"{load['peak_mb']:,.0f} MB")
        write_results(args.out, {**head, "rows": rows, "burst": load, "page": page,
                                 "queue": args.queue,
                                 "workers": args.workers or os.cpu_count(), **measured_at()})
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
