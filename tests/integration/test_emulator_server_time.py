"""The emulator's modelled server time (``aether emulator serve --server-time``): requests in
flight overlap as on Google's servers, and the answers are the default mode's.

The emulator runs as its own process through the CLI; the genuine ee client talks to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from support import require

from aether.core import aef
from aether.testing.emulator import Emulator, connect, in_flight

ee = require("ee")

#: Seconds per EECU-second: ~0.5 s for one of the requests below (10 buffers of 100 m).
SERVER_TIME = 2.5


def _request(sample_city, seed: int):
    """reduceRegions(mean) over 10 random 100 m buffers in the sample city."""
    w, s, e, n = sample_city.place.boundary.bounds
    rng = np.random.default_rng(seed)
    pts = zip(rng.uniform(w + 0.006, e - 0.006, 10), rng.uniform(s + 0.003, n - 0.003, 10),
              strict=True)
    fc = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([a, b]).buffer(100), {"i": i})
                               for i, (a, b) in enumerate(pts)])
    img = ee.ImageCollection(aef.COLLECTION_ID).filterDate("2024-01-01", "2025-01-01").mosaic()
    return img.reduceRegions(collection=fc, reducer=ee.Reducer.mean(), scale=10,
                             crs="EPSG:32635")


def _log(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/_emulator/log") as r:
        return json.load(r)["requests"]


def test_server_time_overlaps_requests_and_keeps_answers(sample_city) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aether", "emulator", "serve", "--port", "0", "--tiles",
         str(sample_city.tiles), "--server-time", str(SERVER_TIME)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()  # type: ignore[union-attr]
        ee.deprecation._FetchDataCatalogStac = lambda: {}
        ee.Initialize(credentials=None, url=url, project="demo-project")
        requests = [_request(sample_city, seed) for seed in range(4)]
        first = [r.getInfo() for r in requests]  # computed once, one at a time
        warm = [e for e in _log(url) if "eecu" in e]
        assert len(warm) == 4 and not any(e["cached"] for e in warm)
        modelled = [e["server_ms"] / 1000 for e in warm]
        assert all(0.3 < s < 1.0 for s in modelled), modelled
        assert all(e["ms"] >= e["server_ms"] for e in warm)

        since = time.time()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            again = list(pool.map(lambda r: r.getInfo(), requests))
        wall = time.perf_counter() - t0
        log = [e for e in _log(url) if e["start"] >= since and "eecu" in e]
        assert again == first
        assert len(log) == 4 and all(e["cached"] for e in log)
        # the four overlap: well under their modelled times end to end
        assert wall < 0.6 * sum(modelled), (wall, modelled)
        assert in_flight(log, since=since)["peak"] == 4
    finally:
        ee.Reset()
        proc.terminate()
        proc.wait(timeout=10)
    # the default mode (in-process, no server time) answers exactly the same
    connect(Emulator(tiles=sample_city.tiles))
    try:
        assert [_request(sample_city, seed).getInfo() for seed in range(4)] == first
    finally:
        ee.Reset()
