"""Emulator operations as the genuine ee client sees them: exports, faults, the loopback server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
from support import require

from aether.core import aef
from aether.testing.emulator import ALL_KINDS, Faults
from aether.testing.emulator.faults import KINDS

ee = require("ee")

CRS = "EPSG:32635"


def _lonlat(sample_city, n: int) -> list[tuple[float, float]]:
    """n points spread over the sample city, 300 m inside its boundary box."""
    w, s, e, nn = sample_city.place.boundary.bounds
    rng = np.random.default_rng(n)
    return list(zip(rng.uniform(w + 0.006, e - 0.006, n), rng.uniform(s + 0.003, nn - 0.003, n),
                    strict=True))


def _poi_means(sample_city, n: int = 6):
    pois = ee.FeatureCollection([ee.Feature(ee.Geometry.Point([a, b]).buffer(100), {"poi_id": i})
                                 for i, (a, b) in enumerate(_lonlat(sample_city, n))])
    img = (ee.ImageCollection(aef.COLLECTION_ID).filterDate("2024-01-01", "2025-01-01")
           .filterBounds(pois.geometry().bounds()).mosaic())
    return img.reduceRegions(collection=pois, reducer=ee.Reducer.mean(), scale=10, crs=CRS)


def _wait(task, timeout: float = 60) -> dict:
    t0 = time.time()
    while True:
        st = task.status()
        if st["state"] in ("COMPLETED", "FAILED", "CANCELLED") or time.time() - t0 > timeout:
            return st
        time.sleep(0.05)


def test_exports_land_as_files_and_assets(ee_emulator, sample_city, tmp_path) -> None:
    fc = _poi_means(sample_city)
    want = pd.DataFrame([f["properties"] for f in fc.getInfo()["features"]])

    gcs = ee.batch.Export.table.toCloudStorage(collection=fc, description="poi_emb",
                                               bucket="my-bucket", fileNamePrefix="poi/emb",
                                               fileFormat="CSV")
    gcs.start()
    st = _wait(gcs)
    assert st["state"] == "COMPLETED", st
    path = tmp_path / "exports" / "gcs" / "my-bucket" / "poi" / "emb.csv"
    assert st["destination_uris"] == [path.as_uri()]
    got = pd.read_csv(path)
    assert list(got.columns[:1]) == ["system:index"] and got.columns[-1] == ".geo"
    assert list(got["poi_id"]) == list(want["poi_id"])
    np.testing.assert_allclose(got[list(aef.BANDS)], want[list(aef.BANDS)], atol=1e-7)

    drive = ee.batch.Export.table.toDrive(collection=fc, description="d", folder="f",
                                          fileNamePrefix="poi_drive", fileFormat="GeoJSON")
    drive.start()
    assert _wait(drive)["state"] == "COMPLETED"
    gj = json.loads((tmp_path / "exports" / "drive" / "f" / "poi_drive.geojson").read_text())
    assert [f["properties"]["poi_id"] for f in gj["features"]] == list(want["poi_id"])

    asset = ee.batch.Export.table.toAsset(collection=fc, description="a",
                                          assetId="projects/demo-project/assets/poi_emb")
    asset.start()
    assert _wait(asset)["state"] == "COMPLETED"
    back = ee.FeatureCollection("projects/demo-project/assets/poi_emb")
    assert back.aggregate_array("poi_id").getInfo() == list(want["poi_id"])
    ops = ee.data.listOperations()
    assert len(ops) == 3 and all(op["metadata"]["state"] == "SUCCEEDED" for op in ops)


def test_export_cancel_and_failed_operation(ee_emulator, sample_city, tmp_path) -> None:
    fc = _poi_means(sample_city, 2)
    ee_emulator.export_delay = 3.0
    task = ee.batch.Export.table.toCloudStorage(collection=fc, description="c", bucket="b",
                                                fileNamePrefix="cancelled")
    task.start()
    assert task.status()["state"] in ("READY", "RUNNING")
    task.cancel()
    st = task.status()
    assert st["state"] == "CANCELLED"
    assert not (tmp_path / "exports" / "gcs" / "b" / "cancelled.csv").exists()

    ee_emulator.export_delay = 0.0
    ee_emulator.faults = Faults(schedule={0: "export_failed"})
    failed = ee.batch.Export.table.toCloudStorage(collection=fc, description="f", bucket="b",
                                                  fileNamePrefix="failed")
    failed.start()
    st = _wait(failed)
    assert st["state"] == "FAILED" and "Export failed" in st["error_message"]
    assert not (tmp_path / "exports" / "gcs" / "b" / "failed.csv").exists()


@pytest.mark.parametrize("kind", ["quota", "internal", "unavailable", "timeout", "memory",
                                  "aggregations"])
def test_each_error_fault_surfaces_as_ee_exception(ee_emulator, kind) -> None:
    ee.data.setMaxRetries(0)
    ee_emulator.faults = Faults(schedule={0: kind})
    status, _, message = KINDS[kind]
    with pytest.raises(ee.EEException) as err:
        ee.Number(41).add(1).getInfo()
    assert message in str(err.value)
    assert ee.Number(41).add(1).getInfo() == 42  # only request 0 was scheduled to fail
    assert [e["status"] for e in ee_emulator.log if e["route"]][-2:] == [status, 200]


@pytest.mark.parametrize(("kind", "status", "message"), [
    ("ee_memory", 400, "Earth Engine memory capacity exceeded."),
    ("capacity", 400, "Earth Engine capacity exceeded."),
    ("payload", 400, "Request payload size exceeds the limit: 10485760 bytes."),
    ("request_size", 400, "Total request size (56623104 bytes) must be less than or equal to "
                          "50331648 bytes."),
    ("deadline", 504, "Deadline expired before operation could complete."),
])
def test_earth_engine_limit_faults_carry_its_messages(ee_emulator, kind, status, message
                                                      ) -> None:
    ee.data.setMaxRetries(0)
    ee_emulator.faults = Faults(schedule={0: kind})
    with pytest.raises(ee.EEException) as err:
        ee.Number(41).add(1).getInfo()
    assert str(err.value) == message
    assert [e["status"] for e in ee_emulator.log if e["route"]][-1] == status


def test_request_size_fault_names_the_requested_size(ee_emulator, sample_city) -> None:
    ee.data.setMaxRetries(0)
    ee_emulator.faults = Faults(schedule={0: "request_size"})
    grid = {"dimensions": {"width": 512, "height": 512}, "crsCode": CRS,
            "affineTransform": {"scaleX": 10, "shearX": 0, "translateX": 385_000,
                                "shearY": 0, "scaleY": -10, "translateY": 6_676_000}}
    img = ee.ImageCollection(aef.COLLECTION_ID).first()
    with pytest.raises(ee.EEException, match=r"Total request size \(83886080 bytes\)"):
        ee.data.computePixels({"expression": img, "fileFormat": "NUMPY_NDARRAY", "grid": grid,
                               "bandIds": list(aef.BANDS)})


def test_dropped_connection_and_client_retries(ee_emulator) -> None:
    ee.data.setMaxRetries(0)
    ee_emulator.faults = Faults(schedule={0: "drop"})
    with pytest.raises(ConnectionError):
        ee.Number(1).getInfo()
    ee.data.setMaxRetries(5)  # the client's default: a 503 is retried transparently
    ee_emulator.faults = Faults(schedule={0: "unavailable"})
    assert ee.Number(7).getInfo() == 7
    assert [e["status"] for e in ee_emulator.log if e["route"] == "value:compute"] == [
        0, 503, 200]


def test_fault_rate_is_seeded_and_latency_applies(ee_emulator) -> None:
    a, b = Faults(rate=0.3, seed=5), Faults(rate=0.3, seed=5)
    seq_a = [a.draw("table:computeFeatures") for _ in range(2000)]
    assert seq_a == [b.draw("table:computeFeatures") for _ in range(2000)]
    hit = [k for k in seq_a if k]
    assert 0.27 < len(hit) / 2000 < 0.33
    assert set(hit) == set(ALL_KINDS) - {"export_failed"}
    ee_emulator.faults = Faults(latency=0.3)
    t0 = time.perf_counter()
    assert ee.Number(3).getInfo() == 3
    assert time.perf_counter() - t0 >= 0.3
    assert ee_emulator.log[-1]["ms"] >= 300


def test_loopback_fixture_with_bearer_credentials(ee_server, emulator, sample_city) -> None:
    from google.oauth2.credentials import Credentials

    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=Credentials("fake-token"), url=ee_server, project="demo-project")
    try:
        info = _poi_means(sample_city, 3).getInfo()
    finally:
        ee.Reset()
    assert len(info["features"]) == 3 and info["features"][0]["properties"]["A00"] is not None
    assert ee_server.startswith("http://127.0.0.1:")
    assert [e["route"] for e in emulator.log][-1] == "value:compute"


def test_cli_serve_subprocess(sample_city, tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aether", "emulator", "serve", "--port", "0", "--tiles",
         str(sample_city.tiles), "--exports", str(tmp_path / "x"), "--fault-schedule", "1:drop",
         "--deny-project", "no-ee"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()  # type: ignore[union-attr]
        ee.deprecation._FetchDataCatalogStac = lambda: {}
        ee.Initialize(credentials=None, url=url, project="demo-project")
        ee.data.setMaxRetries(0)
        coll = ee.ImageCollection(aef.COLLECTION_ID)
        assert coll.size().getInfo() == 1
        with pytest.raises(ConnectionError):
            coll.size().getInfo()
        assert coll.first().bandNames().getInfo() == list(aef.BANDS)
        with urllib.request.urlopen(f"{url}/_emulator/log") as r:
            log = json.load(r)["requests"]
        assert [e["status"] for e in log if e["route"] == "value:compute"] == [200, 0, 200]
        ee.Reset()
        ee.deprecation._FetchDataCatalogStac = lambda: {}
        with pytest.raises(ee.EEException, match="not registered to use Earth Engine"):
            ee.Initialize(credentials=None, url=url, project="no-ee")
        taken = subprocess.run([sys.executable, "-m", "aether", "emulator", "serve", "--port",
                                url.rsplit(":", 1)[1]], capture_output=True, text=True,
                               timeout=60)
        assert taken.returncode == 2 and "cannot listen on 127.0.0.1" in taken.stderr
    finally:
        ee.Reset()
        proc.terminate()
        proc.wait(timeout=10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aether", "emulator", "serve", "--port", "0", "--exports",
         str(tmp_path / "y"), "--duplicate-request-id", "error"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        ee.deprecation._FetchDataCatalogStac = lambda: {}
        ee.Initialize(credentials=None, url=url, project="demo-project")
        task = ee.batch.Export.table.toCloudStorage(
            ee.FeatureCollection([ee.Feature(None, {"k": 1})]), "dup", bucket="b")
        config = task.config
        ee.data.exportTable("rid-1", config)
        with pytest.raises(ee.EEException, match="already been used"):
            ee.data.exportTable("rid-1", config)
    finally:
        ee.Reset()
        proc.terminate()
        proc.wait(timeout=10)
    odd = subprocess.run([sys.executable, "-m", "aether", "emulator", "serve",
                          "--duplicate-request-id", "maybe"], capture_output=True, text=True,
                         timeout=60)
    assert odd.returncode == 2 and "duplicate requestId" in odd.stderr
    bad = subprocess.run([sys.executable, "-m", "aether", "emulator", "serve", "--tiles",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no AlphaEarth index" in bad.stderr
