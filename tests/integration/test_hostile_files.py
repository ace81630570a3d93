"""Hostile files handed to the real CLI (issue #25): each is one line on stderr, exit 2, within
seconds, and nothing is written — the data directory and everything beside it stay as they
were."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from reference_checkpoint import reference_state, save, small_state
from support import require


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (not following links): kind and content hash."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "special"
    return out


def refused(r, pattern: str) -> str:
    """The single stderr line of a refusal (exit 2, no traceback) matching ``pattern``."""
    import re

    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("aether: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path]:
    """(an empty folder holding the data dir and the inputs, the data dir inside it)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("the data dir's own file\n")
    return tmp_path, data


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "dir"])
@pytest.mark.parametrize("how", ["run", "settings", "settings-env"])
def test_non_regular_yaml_is_one_line_within_seconds(place, cli, target, how) -> None:
    root, data = place
    path = {"/dev/zero": "/dev/zero", "fifo": str(root / "f.yaml"), "dir": str(root)}[target]
    if target == "fifo":
        os.mkfifo(path)  # nobody writes: reading it would block forever
    argv = {"run": ["run", path, "--data-dir", str(data)],
            "settings": ["--settings", path, "extract", "--city", "Helsinki", "--offline",
                         "--data-dir", str(data)],
            "settings-env": ["extract", "--city", "Helsinki", "--offline", "--data-dir",
                             str(data)]}[how]
    env = {"AETHER_SETTINGS": path} if how == "settings-env" else {}
    before = snapshot(root)
    t0 = time.perf_counter()
    r = cli(*argv, env=env, timeout=60)
    assert time.perf_counter() - t0 < 30
    kind = {"/dev/zero": "a device", "fifo": "a FIFO", "dir": "a directory"}[target]
    refused(r, rf"(run|settings) file {path} is {kind}, not a regular file")
    assert snapshot(root) == before


@pytest.mark.parametrize(("body", "pattern"), [
    ("radii: [-5]\n", r"r\.yaml:3: radii: radius -5 m is out of range"),
    ("years: [1999]\n", r"r\.yaml:3: years\[0\]: year 1999 is out of range"),
    ("steps: [extract]\nsteps: [extract, train]\n",
     r"r\.yaml:4: key 'steps' is given twice \(first on line 3\)"),
])
def test_run_file_is_checked_like_the_command_line_before_any_work(place, cli, body,
                                                                     pattern) -> None:
    root, _ = place
    f = root / "r.yaml"
    f.write_text(f"data_dir: data\nsource: {{name: cog}}\n{body}"
                 "cities:\n  - {name: Helsinki, sample: true}\n")
    before = snapshot(root)
    r = cli("run", str(f), timeout=120, cwd=root)
    refused(r, pattern)
    assert snapshot(root) == before  # no runs/ report, no sample, no tables


def _checkpoint(path: Path, spoil=None, hyper: dict | None = None) -> None:
    """A small reference-format checkpoint (random heads), changed by ``spoil(ae, txt)``;
    ``hyper`` replaces its hyper-parameters."""
    require("torch")
    ae, txt = reference_state(small_state())
    if spoil is not None:
        spoil(ae, txt)
    save(path, ae, txt, epoch=1,
         hyper_parameters=hyper or {"data": {"pix_radius": 4, "aug_pix_radius": 9}})


def _set(d: dict, key: str, value) -> None:
    d[key] = value


CHECKPOINTS = {
    "gate-5": (lambda ae, txt: _set(ae, "gate", ae["gate"].repeat(5)),
               r"AE gate has 5 values, not 1"),
    "no-text-projection": (lambda ae, txt: txt.clear(),
                           r"txt_state_dict lacks proj\.weight"),
    "nan-weight": (lambda ae, txt: ae["proj.2.weight"].__setitem__((0, 0), float("nan")),
                   r"ae_state_dict\.proj\.2\.weight is empty or holds NaN"),
    "inf-text-bias": (lambda ae, txt: txt["proj.bias"].fill_(float("inf")),
                      r"txt_state_dict\.proj\.bias is empty or holds NaN"),
    "weight-is-a-vector": (lambda ae, txt: _set(ae, "shortcut.weight", ae["shortcut.bias"]),
                           r"shortcut\.weight has 1 dimensions, not 2"),
    "weight-is-a-list": (lambda ae, txt: _set(ae, "proj.0.bias", [1.0, 2.0]),
                         r"proj\.0\.bias is not a floating-point tensor"),
    "wrong-width": (lambda ae, txt: _set(ae, "proj.0.weight", ae["proj.0.weight"][:, :10]),
                    r"does not fit the AETHER heads"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_damaged_checkpoint_is_one_line_and_imports_nothing(place, cli, case) -> None:
    root, data = place
    spoil, pattern = CHECKPOINTS[case]
    ckpt = root / f"{case}.pth"
    _checkpoint(ckpt, spoil)
    before = snapshot(root)
    r = cli("import-checkpoint", str(ckpt), "--city", "Helsinki", "--run", "ref",
            "--data-dir", str(data), timeout=120)
    refused(r, pattern)
    assert snapshot(root) == before


HYPER = {  # nonsense a checkpoint may state, and the line that refuses it
    "tau-nan": ({"model": {"tau_xt": float("nan")}}, r"tau_xt is 'nan', not a float"),
    "negative-pixel-radius": ({"data": {"pix_radius": -4, "aug_pix_radius": 9}},
                              r"pix_radius -4"),
    "text-model-path": ({"text": {"backend": "hf", "hf_model": "../../etc/models"}},
                        r"names the text model '\.\./\.\./etc/models', which is not a model id"),
    "epoch-zero": ({"train": {"epochs": 0}}, r"epochs is 0, not a count"),
    "lr-negative": ({"model": {"lr": -1e-3}}, r"lr is -0\.001, which no training uses"),
}


@pytest.mark.parametrize("case", list(HYPER))
def test_nonsense_hyper_parameters_are_one_line_and_import_nothing(place, cli, case) -> None:
    root, data = place
    hyper, pattern = HYPER[case]
    ckpt = root / f"{case}.pth"
    _checkpoint(ckpt, hyper=hyper)
    before = snapshot(root)
    r = cli("import-checkpoint", str(ckpt), "--city", "Helsinki", "--run", "ref",
            "--data-dir", str(data), timeout=120)
    refused(r, pattern)
    assert snapshot(root) == before


def test_sound_checkpoint_still_imports(place, cli) -> None:
    root, data = place
    _checkpoint(root / "ok.pth")
    r = cli("import-checkpoint", str(root / "ok.pth"), "--city", "Helsinki", "--run", "ref",
            "--data-dir", str(data), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (data / "helsinki" / "2024" / "models" / "ref" / "model.safetensors").is_file()


@pytest.mark.parametrize("seed", ["99999999999999999999999", "-1", "4294967296"])
def test_seed_out_of_range_is_one_line_before_any_work(place, cli, seed) -> None:
    root, data = place
    before = snapshot(root)
    r = cli("train", "--city", "Helsinki", "--seed", seed, "--data-dir", str(data))
    refused(r, rf"seed {seed} is out of range")
    assert snapshot(root) == before


def test_seed_out_of_range_in_a_run_file(place, cli) -> None:
    root, _ = place
    f = root / "r.yaml"
    f.write_text("data_dir: data\nsource: {name: cog}\nsteps: [extract, train]\n"
                 "train: {seed: 99999999999999999999999}\n"
                 "cities:\n  - {name: Helsinki, sample: true}\n")
    before = snapshot(root)
    refused(cli("run", str(f), cwd=root), r"r\.yaml:4: train\.seed: Input should be less than")
    assert snapshot(root) == before


def test_overture_release_with_garbage_wkb_is_one_line(place, cli, sample_extract,
                                                        sample_city) -> None:
    import geopandas as gpd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from overture_release import RELEASE, write_release

    root, data = place
    release = root / "release"
    write_release(release, gpd.read_parquet(sample_extract / "pois.parquet").head(100))
    part = next((release / RELEASE).rglob("part-00000.parquet"))
    table = pq.read_table(part)
    wkb = table.column("geometry").to_pylist()
    wkb[3] = b"\x01\x07\x00\x00\x00garbage, not WKB"
    pq.write_table(table.set_column(table.schema.get_field_index("geometry"), "geometry",
                                    pa.array(wkb, pa.binary())), part)
    w, s, e, n = sample_city.place.boundary.bounds
    before = snapshot(root)
    r = cli("extract", "--bbox", f"{w},{s},{e},{n}", "--pois", f"overture:{RELEASE}",
            "--source", "cog", "--tiles", str(sample_city.tiles), "--data-dir", str(data),
            env={"AETHER_OVERTURE_ROOT": str(release)}, timeout=300)
    refused(r, r"Overture place '08f000000000003' has a geometry that is not WKB")
    assert snapshot(root) == before


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, cli) -> Path:
    """A data directory holding the sample city's extract, grid and a one-epoch model (copied by
    each test)."""
    data = tmp_path_factory.mktemp("links") / "data"
    for argv in (["extract", "--city", "Helsinki", "--offline"],
                 ["grid", "--city", "Helsinki", "--offline"],
                 ["train", "--city", "Helsinki", "--epochs", "1"]):
        r = cli(*argv, "--data-dir", str(data), timeout=600)
        assert r.returncode == 0, r.stderr
    return data


def _outside(root: Path) -> Path:
    """A folder outside the data directory with a file in ``cog/`` (what a link may aim at)."""
    v = root / "outside"
    (v / "cog").mkdir(parents=True)
    (v / "cog" / "precious.txt").write_text("not aether's\n")
    return v


@pytest.mark.parametrize(("link", "argv"), [
    ("helsinki/2024/.work", ["extract", "--city", "Helsinki", "--offline", "--force"]),
    ("helsinki/2024/models", ["train", "--city", "Helsinki", "--epochs", "1"]),
    ("helsinki/2024/models/default", ["train", "--city", "Helsinki", "--epochs", "1"]),
    ("helsinki/2024", ["extract", "--city", "Helsinki", "--offline", "--force"]),
    ("helsinki", ["train", "--city", "Helsinki", "--epochs", "1"]),
    ("helsinki/2024/aether", ["encode", "--city", "Helsinki"]),
    ("_sample", ["sample", "build", "--seed", "7"]),
])
def test_planted_directory_link_is_refused_and_not_followed(extracted, tmp_path, cli, link,
                                                             argv) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(extracted, data, symlinks=True)
    target = _outside(tmp_path)
    planted = data / link
    if planted.exists():  # the real folder moves aside, as an attacker would leave it
        planted.rename(planted.with_name(planted.name + ".real"))
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(target, target_is_directory=True)
    before, outside = snapshot(data), snapshot(target)
    r = cli(*argv, "--data-dir", str(data), timeout=300)
    refused(r, rf"{planted} is a symbolic link \(to {target}\) inside the data directory")
    assert snapshot(target) == outside  # nothing written, deleted or replaced through it
    assert snapshot(data) == before


def test_the_data_directory_itself_may_be_a_link(extracted, tmp_path, cli) -> None:
    import shutil

    real = tmp_path / "disk" / "data"
    shutil.copytree(extracted, real, symlinks=True)
    (tmp_path / "data").symlink_to(real, target_is_directory=True)
    r = cli("extract", "--city", "Helsinki", "--offline", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("points", "pattern"), [
    # the report's case: both sides of 180° and one near the pole
    ([(179.9, 60.0), (-179.9, 60.1), (179.95, 89.9)],
     r"crosses the antimeridian \(longitudes from -179\.9° to 179\.95°\)"),
    ([(179.99, -16.8), (-179.99, -16.7)], r"crosses the antimeridian"),  # Fiji's two sides
    ([(24.94, 60.17), (24.95, 60.18), (139.7, 35.7)],  # Helsinki and Tokyo in one file
     r"covers [\d,]+ km², above the limit of 2,500 km² \(a place taken from its POIs"),
])
def test_place_from_pois_is_checked_for_wrap_and_size(place, cli, sample_city, points,
                                                      pattern) -> None:
    root, data = place
    csv = root / "far.csv"
    csv.write_text("name,category,lon,lat\n"
                   + "".join(f"p{i},cafe,{x},{y}\n" for i, (x, y) in enumerate(points)))
    before = snapshot(root)
    r = cli("extract", "--pois", str(csv), "--no-geocode", "--source", "cog", "--tiles",
            str(sample_city.tiles), "--data-dir", str(data), timeout=120)
    refused(r, pattern)
    assert snapshot(root) == before
    if "covers" in pattern:  # --yes accepts it, from the POIs' own extent (no geocoding)
        r = cli("extract", "--pois", str(csv), "--no-geocode", "--yes", "--source", "cog",
                "--tiles", str(sample_city.tiles), "--data-dir", str(data), timeout=120)
        assert r.returncode == 0, r.stderr


def test_yes_accepts_a_large_place_from_pois_but_not_one_across_180() -> None:
    """``--yes`` reaches a place taken from POIs as it reaches a named one: the area limit
    gives way, the antimeridian check does not (such a polygon is wrong, not large)."""
    from shapely.geometry import MultiPoint

    from aether.errors import PlaceError
    from aether.places.place import place_from_polygon

    far = MultiPoint([(24.94, 60.17), (24.95, 60.18), (139.7, 35.7)]).convex_hull
    with pytest.raises(PlaceError, match="pass yes=True"):  # as the Python API says it
        place_from_polygon("far", far)
    assert place_from_polygon("far", far, yes=True).area_km2 > 2_500
    wrap = MultiPoint([(179.99, -16.8), (-179.99, -16.7), (179.9, -16.9)]).convex_hull
    with pytest.raises(PlaceError, match="antimeridian"):
        place_from_polygon("fiji", wrap, yes=True)


def test_antimeridian_and_area_checks_leave_ordinary_places_alone() -> None:
    from shapely.geometry import MultiPoint, box

    from aether.places.place import crosses_antimeridian, place_from_polygon

    assert crosses_antimeridian(MultiPoint([(179.9, 1), (-179.9, 1)]).convex_hull)
    # points at -100°, 0° and 100°: the shortest arc holding them runs through 0°, not 180°
    assert not crosses_antimeridian(MultiPoint([(-100, 0), (0, 1), (100, 0)]).convex_hull)
    assert not crosses_antimeridian(box(24.9, 60.1, 25.0, 60.2))
    helsinki = place_from_polygon("Helsinki", box(24.9, 60.1, 25.0, 60.2))
    assert 50 < helsinki.area_km2 < 70


@pytest.mark.parametrize("command", ["extract", "grid"])
def test_corrupt_tiles_are_refused_before_the_sample_is_built(place, cli, command) -> None:
    """``--offline --tiles corrupt.tif`` on an empty data dir: the named tiles are read first,
    so nothing (not even the offline sample the POIs come from) is written."""
    root, data = place
    corrupt = root / "corrupt.tif"
    corrupt.write_bytes(os.urandom(5000))
    before = snapshot(root)
    refused(cli(command, "--city", "Helsinki", "--offline", "--tiles", str(corrupt),
                "--source", "cog", "--data-dir", str(data), cwd=root),
            r"cannot read AlphaEarth index .*corrupt\.tif")
    assert snapshot(root) == before
