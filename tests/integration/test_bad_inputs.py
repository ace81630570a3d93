"""Every bad input to every command: exit 2, at most two lines on stderr, no traceback, and
the data directory exactly as it was (same listing, same checksums).

The real CLI runs in a subprocess against a data directory holding the offline sample city
and its extraction; each row of ``CASES`` is one bad value, file, run file or tile index.
``{D}`` in a row is the data directory, ``{F}`` the folder of bad input files.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import require

#: (id, argv, extra environment)
CASES: list[tuple[str, list[str], dict[str, str]]] = [
    # extract: values
    ("radius-tiny", ["extract", "--city", "Helsinki", "--offline", "--radius", "1e-9"], {}),
    ("radius-nan", ["extract", "--city", "Helsinki", "--offline", "--radius", "nan"], {}),
    ("radius-huge", ["extract", "--city", "Helsinki", "--offline", "--radius", "6000"], {}),
    ("radius-text", ["extract", "--city", "Helsinki", "--offline", "--radius", "abc"], {}),
    ("year-early", ["extract", "--city", "Helsinki", "--offline", "--year", "1999"], {}),
    ("year-text", ["extract", "--city", "Helsinki", "--offline", "--year", "abc"], {}),
    ("ee-batch-0", ["extract", "--city", "Helsinki", "--offline", "--source", "ee",
                    "--ee-batch", "0"], {}),
    ("ee-concurrency-neg", ["extract", "--city", "Helsinki", "--offline", "--source", "ee",
                            "--ee-concurrency", "-1"], {}),
    ("ee-batch-huge", ["extract", "--city", "Helsinki", "--offline", "--source", "ee",
                       "--ee-batch", "99999999"], {}),
    ("window-empty-entry", ["extract", "--city", "Helsinki", "--offline", "--window",
                            "square:4,,9"], {}),
    ("source-unknown", ["extract", "--city", "Helsinki", "--offline", "--source", "nope"], {}),
    ("option-for-other-source", ["extract", "--city", "Helsinki", "--offline", "--ee-batch",
                                 "5"], {}),
    ("bbox-three", ["extract", "--bbox", "1,2,3", "--pois", "{F}/ok.csv"], {}),
    ("bbox-nan", ["extract", "--bbox", "nan,60,25,61", "--pois", "{F}/ok.csv"], {}),
    ("city-path", ["extract", "--city", "../etc", "--offline"], {}),
    ("city-unknown-offline", ["extract", "--city", "Atlantis", "--offline"], {}),
    ("which-result-0", ["extract", "--city", "Paris", "--which-result", "0"], {}),
    ("no-such-option", ["extract", "--city", "Helsinki", "--bogus"], {}),
    # extract: files and tiles
    ("pois-nan-coords", ["extract", "--offline", "--pois", "{F}/nan.csv", "--tiles", "{T}"], {}),
    ("pois-missing", ["extract", "--offline", "--pois", "{F}/missing.csv", "--tiles", "{T}"], {}),
    ("pois-empty", ["extract", "--offline", "--pois", "{F}/empty.csv", "--tiles", "{T}"], {}),
    ("pois-not-a-table", ["extract", "--offline", "--pois", "{F}/latin1.yaml", "--tiles",
                          "{T}"], {}),
    ("tiles-bad-crs", ["extract", "--offline", "--pois", "{F}/ok.csv", "--tiles",
                       "{F}/badcrs"], {}),
    ("tiles-missing", ["extract", "--offline", "--pois", "{F}/ok.csv", "--tiles",
                       "{F}/no-tiles"], {}),
    ("boundary-not-vector", ["extract", "--city", "X", "--boundary", "{F}/empty.csv"], {}),
    ("data-dir-is-file", ["extract", "--city", "Helsinki", "--offline", "--data-dir",
                          "{F}/afile"], {}),
    ("data-dir-under-file", ["sample", "build", "--data-dir", "{F}/afile/sub"], {}),
    # grid
    ("grid-cell-zero", ["grid", "--city", "Helsinki", "--offline", "--cell", "0m"], {}),
    ("grid-cell-text", ["grid", "--city", "Helsinki", "--offline", "--cell", "abc"], {}),
    ("grid-h3-res", ["grid", "--city", "Helsinki", "--offline", "--cell", "h3:99"], {}),
    ("grid-zarr-h3", ["grid", "--city", "Helsinki", "--offline", "--cell", "h3:9", "--zarr"], {}),
    # train
    ("train-device-cuda", ["train", "--city", "Helsinki", "--device", "cuda"], {}),
    ("train-device-gpu", ["train", "--city", "Helsinki", "--device", "gpu"], {}),
    ("train-lr-nan", ["train", "--city", "Helsinki", "--set", "lr=nan"], {}),
    ("train-temperature-0", ["train", "--city", "Helsinki", "--set", "temperature=0"], {}),
    ("train-unknown-set", ["train", "--city", "Helsinki", "--set", "nope=1"], {}),
    ("train-epochs-0", ["train", "--city", "Helsinki", "--epochs", "0"], {}),
    ("train-epochs-huge", ["train", "--city", "Helsinki", "--epochs", "99999999999"], {}),
    ("train-preset", ["train", "--city", "Helsinki", "--preset", "nope"], {}),
    ("train-threads-neg", ["train", "--city", "Helsinki", "--threads", "-1"], {}),
    ("train-not-extracted", ["train", "--city", "Nowhere"], {}),
    # encode, evaluate, query
    ("encode-no-model", ["encode", "--city", "Helsinki", "--model", "missing"], {}),
    ("evaluate-seeds-0", ["evaluate", "--city", "Helsinki", "--task", "land_use",
                          "--seeds", "0"], {}),
    ("evaluate-task-missing", ["evaluate", "--city", "Helsinki", "--task", "nope"], {}),
    ("evaluate-task-bomb", ["evaluate", "--city", "Helsinki", "--task", "{F}/bomb.yaml"], {}),
    ("query-empty", ["query", "", "--city", "Helsinki"], {}),
    ("query-k-0", ["query", "cafe", "--city", "Helsinki", "--k", "0"], {}),
    ("query-cell-nan", ["query", "cafe", "--city", "Helsinki", "--cell", "nan"], {}),
    ("query-no-model", ["query", "cafe", "--city", "Helsinki", "--model", "nope"], {}),
    # run files
    ("run-bomb", ["run", "{F}/bomb.yaml"], {}),
    ("run-not-utf8", ["run", "{F}/latin1.yaml"], {}),
    ("run-unset-var", ["run", "{F}/unset.yaml"], {}),
    ("run-misspelt-option", ["run", "{F}/typo.yaml"], {}),
    ("run-option-zero", ["run", "{F}/zero.yaml"], {}),
    ("run-missing", ["run", "{F}/missing.yaml"], {}),
    ("run-directory", ["run", "{F}"], {}),
    ("run-dev-zero", ["run", "/dev/zero"], {}),
    ("run-fifo", ["run", "{F}/fifo.yaml"], {}),
    ("run-radius-negative", ["run", "{F}/negative.yaml"], {}),
    ("run-year-1999", ["run", "{F}/y1999.yaml"], {}),
    ("run-duplicate-key", ["run", "{F}/dup.yaml"], {}),
    ("run-epochs-huge", ["run", "{F}/epochs.yaml"], {}),
    ("run-window-empty-entry", ["run", "{F}/window.yaml"], {}),
    ("settings-duplicate-key", ["--settings", "{F}/dup-settings.yaml", "extract", "--city",
                                "Helsinki", "--offline"], {}),
    # serve
    ("serve-basemap-unknown", ["serve", "--city", "Helsinki", "--basemap", "satellite"], {}),
    # demo, sample, emulator
    ("demo-seeds-0", ["demo", "--seeds", "0"], {}),
    ("demo-epochs-0", ["demo", "--epochs", "0"], {}),
    ("demo-epochs-huge", ["demo", "--epochs", "99999999999"], {}),
    ("sample-year", ["sample", "build", "--year", "1999"], {}),
    ("emulator-port", ["emulator", "serve", "--port", "99999"], {}),
    ("emulator-latency-nan", ["emulator", "serve", "--latency", "nan"], {}),
    ("emulator-fault-rate", ["emulator", "serve", "--fault-rate", "2"], {}),
    ("emulator-export-delay", ["emulator", "serve", "--export-delay", "-1"], {}),
    ("emulator-no-index", ["emulator", "serve", "--tiles", "{F}/no-tiles"], {}),
    # settings
    ("settings-unknown-key", ["--settings", "{F}/settings-typo.yaml", "extract", "--city",
                              "Helsinki", "--offline"], {}),
    ("settings-env-bad", ["extract", "--city", "Helsinki", "--offline"],
     {"AETHER_MAX_AREA_KM2": "abc"}),
    ("settings-file-bomb", ["extract", "--city", "Helsinki", "--offline"],
     {"AETHER_SETTINGS": "{F}/bomb.yaml"}),
    ("settings-file-dev-zero", ["--settings", "/dev/zero", "extract", "--city", "Helsinki",
                                "--offline"], {}),
    ("settings-file-fifo", ["grid", "--city", "Helsinki", "--offline"],
     {"AETHER_SETTINGS": "{F}/fifo.yaml"}),
]

#: The nested-alias "billion laughs" shape (9 levels of 9 aliases each).
BOMB = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["cities: [{name: Oslo}]", "name: x", "kind: classification"]) + "\n"


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a directory marker or the file's sha256."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else
            hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory, cli) -> tuple[Path, Path, Path]:
    """(data dir with the sample extracted, folder of bad files, the sample tiles)."""
    data = tmp_path_factory.mktemp("bad-data")
    r = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    tiles = data / "_sample" / "helsinki" / "tiles"
    files = tmp_path_factory.mktemp("bad-files")
    (files / "ok.csv").write_text("name,category,lon,lat\ncafe a,cafe,24.94,60.17\n")
    (files / "nan.csv").write_text("name,category,lon,lat\na,cafe,24.94,60.17\nb,cafe,nan,60.17\n")
    (files / "empty.csv").write_text("")
    (files / "afile").write_text("not a directory\n")
    (files / "bomb.yaml").write_text(BOMB)
    (files / "latin1.yaml").write_bytes("cities:\n  - name: Malm\xf6\n".encode("latin-1"))
    (files / "unset.yaml").write_text(
        "source: {name: ee, options: {ee_project: '${AETHER_TEST_NEVER_SET}'}}\n"
        "cities: [{name: Oslo}]\n")
    (files / "typo.yaml").write_text("source: {name: ee, options: {ee_bacth: 5}}\n"
                                     "cities: [{name: Oslo}]\n")
    (files / "zero.yaml").write_text("source: {name: ee, options: {ee_batch: 0}}\n"
                                     "cities: [{name: Oslo}]\n")
    (files / "settings-typo.yaml").write_text("max_aera_km2: 5\n")
    (files / "negative.yaml").write_text("radii: [-5]\nsource: {name: cog}\n"
                                         "cities: [{name: Helsinki, sample: true}]\n")
    (files / "y1999.yaml").write_text("years: [1999]\nsource: {name: cog}\n"
                                      "cities: [{name: Helsinki, sample: true}]\n")
    (files / "dup.yaml").write_text("source: {name: cog}\nradii: [100]\nradii: [200]\n"
                                    "cities: [{name: Helsinki, sample: true}]\n")
    (files / "epochs.yaml").write_text("train: {epochs: 99999999999}\nsource: {name: cog}\n"
                                       "cities: [{name: Helsinki, sample: true}]\n")
    (files / "window.yaml").write_text("radii: ['square:4,,9']\nsource: {name: cog}\n"
                                       "cities: [{name: Helsinki, sample: true}]\n")
    (files / "dup-settings.yaml").write_text("max_area_km2: 5\nmax_area_km2: 50000\n")
    os.mkfifo(files / "fifo.yaml")  # no writer: a blocking read would hang
    (files / "badcrs").mkdir()
    index = pq.read_table(tiles / "aef_index.parquet")
    col = index.schema.get_field_index("crs")
    pq.write_table(index.set_column(col, "crs", pa.array(["EPSG:NOPE"] * len(index))),
                   files / "badcrs" / "aef_index.parquet")
    return data, files, tiles


def test_at_least_forty_cases_covering_every_command() -> None:
    assert len(CASES) >= 40
    firsts = {next(a for a in argv if not a.startswith("-") and "{" not in a)
              for _, argv, _ in CASES}
    assert {"extract", "grid", "train", "encode", "evaluate", "query", "run", "demo", "sample",
            "emulator"} <= firsts


@pytest.mark.parametrize(("argv", "env"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, cli, argv, env) -> None:
    data, files, tiles = world
    if "cuda" in argv:
        torch = require("torch")
        if torch.cuda.is_available():
            pytest.skip("this torch has a GPU: --device cuda is valid here")

    def fill(s: str) -> str:
        return s.replace("{F}", str(files)).replace("{T}", str(tiles)).replace("{D}", str(data))

    args = [fill(a) for a in argv]
    if "--data-dir" not in args and args[0] != "emulator":
        args += ["--data-dir", str(data)]
    before = snapshot(data)
    t0 = time.perf_counter()
    r = cli(*args, env={"AETHER_DATA_DIR": str(data), **{k: fill(v) for k, v in env.items()}},
            timeout=120, cwd=files)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (args, r.stdout[-500:], r.stderr[-2000:])
    assert 1 <= len(lines) <= 2, r.stderr
    assert lines[0].startswith("aether: error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(data) == before, args
    assert time.perf_counter() - t0 < 60
