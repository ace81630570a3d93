"""The Earth Engine source when real Earth Engine pushes back: load errors split the batch,
export tasks are recovered after a crash whatever EE answers to a repeated request id, a
cancelled task is reported, exported CSVs keep their ids, Drive names are literal.

The genuine ee client talks to the loopback emulator; faults are the emulator's, with the
messages real Earth Engine sends.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from aether.embeddings import get_source
from aether.errors import EarthEngineError, InputError
from aether.io.tables import sort_poi_embeddings
from aether.testing.emulator import Emulator, Faults, running

LOAD_KINDS = ("ee_memory", "capacity", "payload", "request_size", "deadline")


@pytest.fixture
def pois(sample_extract: Path) -> gpd.GeoDataFrame:
    """12 POIs spread over the sample city, with ids that look like numbers."""
    gdf = gpd.read_parquet(sample_extract / "pois.parquet")
    part = gdf.iloc[:: max(1, len(gdf) // 12)].head(12).reset_index(drop=True)
    return part.assign(poi_id=[f"{i:03d}" for i in range(len(part))])  # "000", "007", ...


@pytest.fixture
def reset_ee():
    yield
    import ee

    ee.Reset()


def _source(workdir: Path, url: str, **opts):
    return get_source("ee", workdir=workdir, ee_url=url, ee_project="demo", ee_backoff=0.01,
                      **opts)


def _means(src, pois: gpd.GeoDataFrame) -> pd.DataFrame:
    return sort_poi_embeddings(src.point_means(pois, [100.0, 200.0], 2024))


def _routes(emu: Emulator, route: str) -> int:
    return sum(1 for e in emu.log if e["route"] == route)


@pytest.mark.parametrize("kind", LOAD_KINDS)
def test_load_errors_split_the_batch(kind, ee_server, emulator, pois, tmp_path, reset_ee):
    clean = _means(_source(tmp_path / "clean", ee_server), pois)
    start = len(emulator.log)
    # eligible request 0 is the coverage check, 1 the zone's grid (its image's projection),
    # 2 the batch's computeFeatures
    emulator.faults = Faults(schedule={2: kind})
    src = _source(tmp_path / kind, ee_server)
    out = _means(src, pois)
    pd.testing.assert_frame_equal(out, clean)
    assert [e["fault"] for e in emulator.log[start:] if e["fault"]] == [kind]
    assert src.stats.splits == 1 and src.stats.retries == 0  # halved, never re-sent as is
    # the failed request, then its two halves
    assert sum(1 for e in emulator.log[start:] if e["route"] == "table:computeFeatures") == 3


def test_exported_csv_keeps_ids_that_look_like_numbers(ee_server, emulator, pois, tmp_path,
                                                       reset_ee):
    ref = _means(_source(tmp_path / "ref", ee_server), pois)
    assert "007" in set(ref["poi_id"])
    src = _source(tmp_path / "w", ee_server, ee_batch=10, export="gcs://bucket/run",
                  export_read=f"file://{emulator.exports}/gcs/bucket")
    out = _means(src, pois)
    pd.testing.assert_frame_equal(out, ref)
    assert out["valid_fraction"].notna().all() and (out["valid_fraction"] > 0.9).all()


def test_drive_prefix_is_a_file_name_not_a_folder(ee_server, emulator, pois, tmp_path,
                                                  reset_ee):
    ref = _means(_source(tmp_path / "ref", ee_server), pois)
    drive = emulator.exports / "drive" / "aether_out"
    src = _source(tmp_path / "w", ee_server, ee_batch=10, export="drive://aether_out/helsinki",
                  export_read=f"file://{drive}")
    pd.testing.assert_frame_equal(_means(src, pois), ref)
    files = sorted(p.name for p in drive.iterdir())
    assert len(files) == 3 and all(f.startswith("helsinki_") and f.endswith(".csv")
                                   for f in files), files
    with pytest.raises(InputError, match="nests folders"):
        _source(tmp_path / "x", ee_server, export="drive://aether_out/a/b",
                export_read=f"file://{drive}")


@pytest.mark.parametrize("mode", ["operation", "error"])
def test_crash_between_start_and_record_adopts_the_task(mode, sample_city, pois, tmp_path,
                                                        reset_ee):
    """The request id is recorded, the start reached EE, the operation name was not saved."""
    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports",
                   duplicate_request_id=mode)
    with running(emu) as url:
        def src():
            return _source(tmp_path / "w", url, ee_batch=10, export="gcs://bucket/run",
                           export_read=f"file://{emu.exports}/gcs/bucket")

        ref = _means(src(), pois)
        n_ops = len(emu.operations)
        assert n_ops == 3
        # the crash: no checkpoint, no operation name; only the request ids were recorded
        book = tmp_path / "w" / "export_tasks.json"
        tasks = json.loads(book.read_text())
        book.write_text(json.dumps({k: {f: v for f, v in rec.items() if f != "operation"}
                                    for k, rec in tasks.items()}))
        for p in (tmp_path / "w" / "batches").glob("*.parquet"):
            p.unlink()
        exports_before = _routes(emu, "table:export")
        again = _means(src(), pois)
    pd.testing.assert_frame_equal(again, ref)
    assert len(emu.operations) == n_ops  # adopted, none started twice
    assert _routes(emu, "table:export") - exports_before == 3  # each id was re-sent once
    if mode == "error":
        assert _routes(emu, "operations") >= 1  # found through listOperations
    after = json.loads(book.read_text())
    assert {k: r["operation"] for k, r in after.items()} == {
        k: r["operation"] for k, r in tasks.items()}


def test_a_cancelled_task_is_reported_not_restarted(ee_server, emulator, pois, tmp_path,
                                                    reset_ee):
    import ee

    emulator.export_delay = 3.0
    src = _source(tmp_path / "w", ee_server, ee_batch=10, ee_poll=0.1,
                  export="gcs://bucket/run", export_read=f"file://{emulator.exports}/gcs/bucket")
    book = tmp_path / "w" / "export_tasks.json"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            src.point_means(pois, [100.0, 200.0], 2024)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    t0 = time.monotonic()
    while not (book.is_file() and book.read_text().count('"operation"') == 3):
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    first = next(iter(json.loads(book.read_text()).values()))["operation"]
    ee.data.cancelOperation(first)  # the user, in the Tasks tab
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], EarthEngineError), errors
    assert "was cancelled" in str(errors[0]) and first in str(errors[0])
    assert len(emulator.operations) == 3  # not started again


def test_users_retry_setting_survives_a_run(ee_server, pois, tmp_path, reset_ee):
    import ee

    ee.data.setMaxRetries(3)  # a notebook user's own choice
    _means(_source(tmp_path / "w", ee_server), pois.head(3))
    assert ee._state.get_state().max_retries == 3


def test_a_resent_id_whose_task_is_gone_starts_a_fresh_task(sample_city, pois, tmp_path,
                                                            reset_ee):
    """EE refuses the re-sent id but no longer lists its task (old tasks leave the list):
    only then is a new task started, under a new request id."""
    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports",
                   duplicate_request_id="error")
    with running(emu) as url:
        def src():
            return _source(tmp_path / "w", url, ee_batch=10, export="gcs://bucket/run",
                           export_read=f"file://{emu.exports}/gcs/bucket")

        ref = _means(src(), pois)
        book = tmp_path / "w" / "export_tasks.json"
        tasks = json.loads(book.read_text())
        book.write_text(json.dumps({k: {f: v for f, v in rec.items() if f != "operation"}
                                    for k, rec in tasks.items()}))
        for p in (tmp_path / "w" / "batches").glob("*.parquet"):
            p.unlink()
        emu.operations.clear()  # the old tasks are no longer listed
        again = _means(src(), pois)
    pd.testing.assert_frame_equal(again, ref)
    after = json.loads(book.read_text())
    assert len(emu.operations) == 3  # one fresh task per batch, no more
    assert all(after[k]["request_id"] != tasks[k]["request_id"] for k in tasks)
    assert {after[k]["operation"] for k in after} == {op["name"] for op in emu.operations.values()}


def test_a_task_whose_run_has_ended_starts_no_export(ee_server, emulator, pois, tmp_path,
                                                      reset_ee):
    """A Dask task writes under the lock its run lent it: once another run holds the data
    dir (the lock file names another holder), the task starts no Earth Engine task."""
    import os

    from aether.errors import LockedError
    from aether.io.store import data_lock, lent_lock, lock_path, lock_token

    root = tmp_path / "data"
    with data_lock(root):
        with lent_lock(root, lock_token(root)):
            src = _source(tmp_path / "w", ee_server, export="gcs://bucket/x",
                          export_read=f"file://{emulator.exports}/gcs/bucket")
        fd = os.open(lock_path(root), os.O_WRONLY)
        os.pwrite(fd, b"4242424\n", 0)  # a new run took the lock
        os.close(fd)
        with pytest.raises(LockedError, match="no longer holds the lock"):
            _means(src, pois)
    assert _routes(emulator, "table:export") == 0


def test_task_books_of_two_processes_see_each_other(tmp_path):
    """The book is read from disk at each look-up: a record another process (another book
    object) wrote is seen, and a write keeps the other's records."""
    from aether.embeddings.earthengine.export import TaskBook

    a, b = TaskBook(tmp_path / "book.json"), TaskBook(tmp_path / "book.json")
    a.put("batch-1", {"request_id": "r1"})
    assert b.get("batch-1") == {"request_id": "r1"}
    b.put("batch-2", {"request_id": "r2"})
    assert a.get("batch-1") == {"request_id": "r1"} and a.get("batch-2") == {"request_id": "r2"}


def test_a_drive_folder_that_syncs_late_is_waited_for(ee_server, emulator, pois, tmp_path,
                                                      reset_ee):
    """EE says SUCCEEDED before the synced copy exists: the file is waited for (it appears
    2 s later), and a copy that never comes is one line after the stated wait."""
    import shutil

    drive = emulator.exports / "drive" / "aether_out"
    synced = tmp_path / "synced"
    synced.mkdir()
    stop = threading.Event()

    def sync_late() -> None:  # Drive for desktop: copies arrive a while after the export
        while not stop.is_set():
            for f in drive.glob("*.csv") if drive.is_dir() else []:
                if not (synced / f.name).exists() and time.time() - f.stat().st_mtime > 2:
                    shutil.copy(f, synced / f".{f.name}")
                    (synced / f".{f.name}").rename(synced / f.name)
            time.sleep(0.1)

    thread = threading.Thread(target=sync_late, daemon=True)
    thread.start()
    try:
        late = _means(_source(tmp_path / "w", ee_server, ee_batch=12,
                              export="drive://aether_out/x", export_read=f"file://{synced}",
                              ee_export_wait=60), pois)
    finally:
        stop.set()
    direct = _means(_source(tmp_path / "d", ee_server, ee_batch=12), pois)
    pd.testing.assert_frame_equal(late, direct, check_exact=False, atol=1e-9)

    never = tmp_path / "never"
    never.mkdir()
    t0 = time.monotonic()
    with pytest.raises(EarthEngineError, match=r"SUCCEEDED but .* is not readable after") as err:
        _means(_source(tmp_path / "n", ee_server, ee_batch=12, export="drive://aether_out/y",
                       export_read=f"file://{never}", ee_export_wait=1.5), pois)
    assert 1.5 <= time.monotonic() - t0 < 30 and "\n" not in str(err.value)
