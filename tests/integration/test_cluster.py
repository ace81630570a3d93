"""Dask execution: the scheduler option, a LocalCluster of worker processes against the
loopback emulator (same table as the local scheduler), progress counts, bad addresses."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import free_port, require, share_sample

from aether.errors import InputError
from aether.execution.cluster import Scheduler, dask_scheduler, parse_scheduler

require("distributed")
require("xee")

KEY = ["poi_id", "radius_m"]


@pytest.mark.parametrize(("text", "want"), [
    (None, Scheduler("threads")), ("threads", Scheduler("threads")),
    ("cluster", Scheduler("cluster", 2)), ("cluster:3", Scheduler("cluster", 3)),
    ("tcp://10.0.0.5:8786", Scheduler("address", address="tcp://10.0.0.5:8786")),
])
def test_parse_scheduler(text, want) -> None:
    assert parse_scheduler(text) == want


@pytest.mark.parametrize("text", ["cluster:0", "cluster:x", "http://h:1", "tcp://", "foo"])
def test_bad_scheduler_text(text) -> None:
    with pytest.raises(InputError):
        parse_scheduler(text)


@pytest.fixture
def own_data(sample_city, data_root: Path, tmp_path: Path):
    """A data directory of this test's own that shares the session's built sample."""
    return lambda name: share_sample(data_root, tmp_path / name)


def test_unreachable_scheduler_is_one_line_in_seconds(cli, own_data) -> None:
    """Given by AETHER_DASK_SCHEDULER (the same value as --scheduler): exit 2, no hang."""
    data = own_data("d")
    addr = f"tcp://127.0.0.1:{free_port()}"
    env = {"AETHER_DATA_DIR": str(data), "AETHER_DASK_SCHEDULER": addr}
    t0 = time.monotonic()
    r = cli("extract", "--city", "Helsinki", "--offline", env=env, timeout=120)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Dask scheduler at {addr}" in lines[0]
    assert not (data / "helsinki").exists()


def test_extract_on_local_cluster_equals_local_scheduler(cli, ee_server, emulator,
                                                         own_data) -> None:
    """`aether extract --source xee --scheduler cluster:2` (worker processes initialise EE
    themselves) writes the same table as the threaded scheduler."""
    from aether.embeddings.base import SourceRequest
    from aether.pipeline.extract import ExtractRequest, run_extract

    opts = {"ee_url": ee_server, "ee_project": "demo-project"}
    local = run_extract(ExtractRequest(city="Helsinki", data_dir=own_data("threads"),
                                       offline=True, source=SourceRequest.of("xee", opts)))
    want = pd.read_parquet(local.out_dir / "poi_embeddings.parquet")
    n_local = len(emulator.log)
    data = own_data("cluster")
    r = cli("extract", "--city", "Helsinki", "--offline", "--source", "xee",
            "--ee-url", ee_server, "--ee-project", "demo-project", "--scheduler", "cluster:2",
            env={"AETHER_DATA_DIR": str(data)}, timeout=300)
    assert r.returncode == 0, r.stderr
    got = pd.read_parquet(data / "helsinki" / "2024" / "poi_embeddings.parquet")
    pd.testing.assert_frame_equal(got.sort_values(KEY).reset_index(drop=True),
                                  want.sort_values(KEY).reset_index(drop=True))
    routes = [e["route"] for e in emulator.log[n_local:]]
    assert routes.count("image:computePixels") == 1  # the pixels came through the cluster


def test_grid_on_local_cluster_with_progress(ee_server, sample_city) -> None:
    """Two worker processes, not this one, do the work; the progress plugin counts it."""
    from aether.embeddings import get_source
    from aether.execution.progress import follow_cluster

    src = get_source("xee", ee_url=ee_server, ee_project="demo-project", xee_chunk=64)
    want = src.grid(sample_city.place, 2024, "100m")
    seen: list[tuple[int, int]] = []
    with dask_scheduler("cluster:2") as client:
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        with follow_cluster(client, lambda total, done: seen.append((total, done))):
            got = src.grid(sample_city.place, 2024, "100m")
    values = [c for c in want.columns if c not in ("cell_id", "geometry")]
    assert got["cell_id"].tolist() == want["cell_id"].tolist()
    np.testing.assert_allclose(got[values].to_numpy(float), want[values].to_numpy(float),
                               rtol=0, atol=1e-6)  # float32 BLAS sums may round apart
    total, done = seen[-1]
    assert total == done and done >= 2 * 6  # 2 × 3 chunks of 64 px: read + reduce each
