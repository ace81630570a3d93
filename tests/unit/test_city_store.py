"""The data layout's owner (CityStore), its lock, and how files are written (issues 12, 15)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import Point

from aether.core.cells import parse_cell
from aether.errors import LockedError
from aether.io.store import CityStore, data_lock
from aether.io.tables import write_json, write_parquet


def test_every_path_of_a_city_year(tmp_path: Path) -> None:
    s = CityStore.of(tmp_path, "helsinki", 2024)
    city = tmp_path / "helsinki" / "2024"
    assert s.dir == city
    assert s.pois == city / "pois.parquet"
    assert s.poi_embeddings == city / "poi_embeddings.parquet"
    assert s.manifest == city / "manifest.json"
    assert s.text_embeddings == city / "text_embeddings.parquet"
    assert s.grid("100m") == city / "grid_embeddings_100m.parquet"
    assert s.grid("0.5km") == city / "grid_embeddings_500m.parquet"
    assert s.grid("h3:9") == city / "grid_embeddings_h3r9.parquet"
    assert s.model("paper") == city / "models" / "paper"
    assert s.encoded("paper", "h3:9") == city / "aether" / "paper" / "grid_h3r9.parquet"
    assert s.encoded("paper", 50) == city / "aether" / "paper" / "grid_50m.parquet"
    assert s.work("ee") == city / ".work" / "ee"
    assert s.step("train") == city / ".aether-steps" / "train.json"
    assert s.steps == city / ".aether-steps"
    assert s.basemap == city / "basemap.parquet"
    assert s.models_dir == city / "models"
    assert s.model_partial("paper") == city / "models" / ".paper.partial"
    assert s.encoded_dir("paper") == city / "aether" / "paper"
    assert s.encoded_pois("paper") == city / "aether" / "paper" / "pois.parquet"
    assert s.evaluation_dir == city / "evaluation"
    assert s.evaluation("landuse", "md") == city / "evaluation" / "landuse.md"
    # one cached result per inputs key: the key is in the name
    assert s.evaluation_cache("landuse", "k1") == city / "evaluation" / ".cache" / "landuse-k1.json"
    assert s.evaluation_cache("landuse", "k1") != s.evaluation_cache("landuse", "k2")
    assert s.maps_dir == city / "maps"
    assert s.labels("landuse") == city / "labels" / "landuse.parquet"
    assert s.lock == tmp_path / ".aether-run.lock"
    assert CityStore.at(city).dir == city and CityStore.at(city).slug == "helsinki"


def test_grids_are_found_by_cell_spec_h3_included(tmp_path: Path) -> None:
    """An h3:9 grid is a grid like any other (the old regex only saw ``<n>m`` names)."""
    s = CityStore.of(tmp_path, "helsinki", 2024)
    for spec in ("h3:9", "200m", "50m", "h3:10"):
        s.grid(spec).parent.mkdir(parents=True, exist_ok=True)
        s.grid(spec).write_bytes(b"")
        s.encoded("m", spec).parent.mkdir(parents=True, exist_ok=True)
        s.encoded("m", spec).write_bytes(b"")
    (s.dir / "grid_embeddings_notes.parquet").write_bytes(b"")  # not a cell spec: ignored
    for spec in ("20m", "30m", "40m"):  # links aether did not make: ignored, the rest still seen
        s.grid(spec).symlink_to(s.grid("50m"))
    want = [parse_cell(c) for c in ("50m", "200m", "h3:10", "h3:9")]
    assert s.grids() == want
    assert s.encoded_cells("m") == want


def test_incomplete_model_dirs_are_skipped_and_named(tmp_path: Path, caplog) -> None:
    s = CityStore.of(tmp_path, "helsinki", 2024)
    good, broken = s.model("good"), s.model("broken")
    for d in (good, broken):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    (good / "model.safetensors").write_bytes(b"x")
    (good / "summary.json").write_text("{}")
    s.model_partial("building").mkdir()
    (s.models_dir / "notes.txt").write_text("not a model")
    (s.models_dir / "linked").symlink_to(good)  # complete, but a link aether did not make
    (s.models_dir / "broken2").mkdir()
    with caplog.at_level(logging.WARNING):
        assert s.models() == ["good"]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping incomplete model(s) in {s.models_dir}: broken, broken2 (re-run `aether train`)"]


def test_a_link_or_dotdot_inside_the_data_directory_is_refused(tmp_path: Path,
                                                              monkeypatch) -> None:
    from aether.errors import LinkError
    from aether.io.store import confined

    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    (root / "helsinki").symlink_to(root / "real")
    new = root / "espoo" / "2024" / "pois.parquet"
    assert confined(new, root) == new  # not there yet: aether makes it
    assert confined(tmp_path / "elsewhere", root) == tmp_path / "elsewhere"  # not inside
    with pytest.raises(LinkError) as e:
        confined(root / "espoo" / ".." / "x", root)
    assert (e.value.message, e.value.hint) == (
        f"{root / 'espoo' / '..' / 'x'} leaves the data directory {root}",
        "name a place inside the data directory")
    link = root / "helsinki"
    with pytest.raises(LinkError) as e:
        confined(link / "2024" / "pois.parquet", root)
    assert (e.value.message, e.value.hint) == (
        f"{link} is a symbolic link (to {root / 'real'}) inside the data directory; aether "
        "does not follow links it did not make",
        f"remove the link (rm {link}) or move the real folder there")

    def unreadable(path):
        raise OSError("no")

    monkeypatch.setattr("aether.io.store.os.readlink", unreadable)
    with pytest.raises(LinkError, match=r"is a symbolic link \(to \?\) inside"):
        confined(link, root)


def test_a_store_at_a_folder_reads_its_slug_and_year_or_keeps_the_folder(tmp_path: Path) -> None:
    s = CityStore.at(tmp_path / "helsinki" / "2024")
    assert (s.root, s.slug, s.year) == (tmp_path, "helsinki", 2024)
    assert s.lock == tmp_path / ".aether-run.lock"  # the data directory's
    own = CityStore.at(tmp_path / "pois" / "shops-1a2b")  # a POI file's folder, no year
    assert (own.slug, own.year, own.dir) == ("pois", None, tmp_path / "pois" / "shops-1a2b")
    assert own.pois == tmp_path / "pois" / "shops-1a2b" / "pois.parquet"
    assert own.lock == tmp_path / "pois" / "shops-1a2b" / ".aether-run.lock"  # its own


def test_a_symlinked_lock_is_refused_and_its_target_survives(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / ".aether-run.lock").symlink_to(precious)
    with pytest.raises(LockedError) as e, data_lock(data):
        pass
    assert (e.value.message, e.value.hint) == (
        f"the lock file {data / '.aether-run.lock'} is a symbolic link",
        "remove it; aether creates its own lock file")
    assert precious.read_text() == "keep me\n"
    (data / ".aether-run.lock").unlink()
    (data / ".aether-run.lock").mkdir()  # not a file at all
    with pytest.raises(LockedError) as e, data_lock(data):
        pass
    assert (e.value.message, e.value.hint) == (
        f"cannot open the lock file {data / '.aether-run.lock'}: Is a directory",
        "check the data directory's permissions")


@pytest.mark.parametrize("text", ["not a pid: someone else's file\n", "a12\n",
                                  "1" * 32 + "\n"])  # the last: a pid is at most 32 bytes
def test_a_lock_file_aether_did_not_write_is_never_truncated(tmp_path: Path, text) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".aether-run.lock").write_text(text)
    with data_lock(data):
        pass
    assert (data / ".aether-run.lock").read_text() == text


def test_a_hard_linked_lock_file_is_not_aethers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ".aether-run.lock").write_text("123\n")
    os.link(data / ".aether-run.lock", tmp_path / "other-name")
    with data_lock(data):
        pass
    assert (data / ".aether-run.lock").read_text() == (tmp_path / "other-name").read_text() \
        == "123\n"


def test_aethers_own_lock_file_is_rewritten_and_removed(tmp_path: Path) -> None:
    """A lock file left by an aether that died (a pid, up to 32 bytes): taken over, then
    removed; a new one is made with mode 644 under umask 022."""
    data = tmp_path / "data"
    data.mkdir()
    lock = data / ".aether-run.lock"
    lock.write_text("1" * 31 + "\n")
    with data_lock(data):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()
    old = os.umask(0o022)
    try:
        with data_lock(data):
            assert stat.S_IMODE(lock.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_same_file_while_the_path_names_the_open_file(tmp_path: Path) -> None:
    from aether.io.store import _same_file

    path = tmp_path / "f"
    path.write_text("a")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _same_file(fd, path)
        (tmp_path / "g").write_text("b")
        os.replace(tmp_path / "g", path)  # another file under the same name, same device
        assert not _same_file(fd, path)
        path.unlink()
        assert not _same_file(fd, path)
    finally:
        os.close(fd)


def test_the_lock_is_reentrant_in_a_process_and_exclusive_across(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code = ("import sys; from pathlib import Path; from aether.io.store import data_lock\n"
            "from aether.errors import LockedError\n"
            "try:\n    with data_lock(Path(sys.argv[1])): print('got it')\n"
            "except LockedError as e: print('refused', e)\n")
    with data_lock(data), data_lock(data):  # the run holds it; its steps take it again
        assert (data / ".aether-run.lock").read_text().strip() == str(os.getpid())
        out = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.startswith("refused another aether run"), out
    out = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "got it"


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        a = write_json({"a": 1}, tmp_path / "a.json")
        b = write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "b.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == 0o644
    assert stat.S_IMODE(b.stat().st_mode) == 0o644


def test_a_successful_write_removes_stale_temp_files_of_its_target(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [tmp_path / ".pois.parquet.abc123.tmp",  # an older aether's name (no pid)
             tmp_path / f".pois.parquet.{dead}-x1y2.tmp"]  # a writer that was killed
    live = tmp_path / f".pois.parquet.{os.getpid()}-inflight.tmp"  # a live writer's
    other = tmp_path / ".manifest.json.abc.tmp"  # another target's: not ours to judge
    for p in (*stale, live, other):
        p.write_bytes(b"half")
    write_parquet(pd.DataFrame({"x": [1]}), tmp_path / "pois.parquet")
    assert not any(p.exists() for p in stale)
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "pois.parquet"])


def test_duplicate_poi_ids_are_reported(caplog) -> None:
    from aether.pois.load import normalise

    raw = gpd.GeoDataFrame(
        {"poi_id": ["a", "b", "a", "a"], "name": ["x", "y", "z", "w"],
         "category": "cafe", "top_category": "food"},
        geometry=[Point(24.94 + i * 0.001, 60.17) for i in range(4)], crs="EPSG:4326")
    with caplog.at_level(logging.WARNING):
        out = normalise(raw, None, "file:shops.csv")
    assert sorted(out["poi_id"]) == ["a", "b"]
    assert "2 row(s) repeat the poi_id" in caplog.text and "file:shops.csv" in caplog.text


def test_one_name_per_meaning() -> None:
    """Evaluation tasks, run steps and trained models each have their own name."""
    from aether.evaluation import tasks
    from aether.ml import encode
    from aether.pipeline import extract, scheduled

    assert scheduled.Step.__dataclass_fields__["status"].default is scheduled.StepState.PENDING
    assert json.dumps(scheduled.StepState.UP_TO_DATE) == '"up to date"'
    assert "cell" in tasks.ProbeTask.__dataclass_fields__
    # the names they replaced, each of which meant two things, are gone
    assert not hasattr(tasks, "Task") and not hasattr(encode, "Run")
    assert not hasattr(extract, "parse_cell")  # one cell parser: aether.core.cells


def test_a_lent_lock_holds_only_while_its_lender_does(tmp_path: Path) -> None:
    """A Dask task writes under the run's lock by its token; once the run lets go, the
    task's checks fail."""
    from aether.io.store import lease_check, lent_lock, lock_token

    with pytest.raises(LockedError) as e:
        lock_token(tmp_path)
    assert (e.value.message, e.value.hint) == (f"this process holds no lock on {tmp_path}",
                                               "take it with data_lock")
    assert lease_check()() is None  # not lent: the process holds the lock itself
    lock = tmp_path / ".aether-run.lock"
    with CityStore.of(tmp_path, "helsinki", 2024).locked() as held:
        assert held == lock and lock.read_text() == f"{os.getpid()}\n"
        token = lock_token(tmp_path)
        assert token == f"{lock.stat().st_ino}:{os.getpid()}"
        with lent_lock(tmp_path, token) as path:
            assert path == lock
            check = lease_check()
            check()  # the lender still holds it
            with data_lock(tmp_path) as again:  # the task's own step, re-entrant
                assert again == lock
        with pytest.raises(LockedError, match="no longer holds the lock on"), \
                lent_lock(tmp_path, f"{lock.stat().st_ino}:1"):
            pass  # another holder's token
        # the lock file swapped for a link to it: not the lock (links are not followed)
        lock.rename(tmp_path / "moved")
        lock.symlink_to(tmp_path / "moved")
        with pytest.raises(LockedError, match="no longer holds"):
            check()
        lock.unlink()
        (tmp_path / "moved").rename(lock)
    assert not lock.exists()
    with pytest.raises(LockedError) as e:
        check()  # the run let go
    assert (e.value.message, e.value.hint) == (
        f"the run that sent this task no longer holds the lock on {tmp_path}",
        "start the run again (`aether run`)")
    with pytest.raises(LockedError, match="no longer holds"), lent_lock(tmp_path, token):
        pass


def test_a_lock_file_of_another_tool_names_its_bytes_in_the_token(tmp_path: Path) -> None:
    """A lock file aether did not write is locked as it is (never rewritten); its bytes,
    whatever they are, go into the token."""
    from aether.io.store import lock_token

    lock = tmp_path / ".aether-run.lock"
    lock.write_bytes(b"\xff\xfe")
    with data_lock(tmp_path):
        assert lock_token(tmp_path) == f"{lock.stat().st_ino}:\ufffd\ufffd"
    assert lock.read_bytes() == b"\xff\xfe"


def test_run_reports_and_ledgers_and_their_ids(tmp_path: Path, monkeypatch) -> None:
    from aether.errors import LinkError
    from aether.io.store import new_run_id, run_ledger, runs_dir

    assert runs_dir(tmp_path) == tmp_path / "runs"
    assert run_ledger(tmp_path, "r1") == tmp_path / "runs" / "r1.eecu.jsonl"
    assert re.fullmatch(rf"nightly-\d{{8}}T\d{{6}}Z-{os.getpid()}", new_run_id("nightly-"))
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{os.getpid()}", new_run_id())
    import time

    monkeypatch.setenv("TZ", "XYZ-05:30")  # a local time 5½ hours ahead of UTC
    time.tzset()
    try:
        before, run_id, after = time.gmtime(), new_run_id(), time.gmtime()
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = time.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%SZ")
    assert time.strftime("%Y%m%d%H%M%S", before) <= time.strftime("%Y%m%d%H%M%S", stamp) \
        <= time.strftime("%Y%m%d%H%M%S", after)  # the id is in UTC, as its Z says
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LinkError):
        runs_dir(tmp_path)
