"""`train: {cities: [...]}` in a run file: the listed cities' tables train one run per year
(as `aether train --city A --city B`), after every one of their extracts, and each of them
is encoded with it; the other cities train alone. Real run files through the real CLI, here
(threads) and on a loopback Dask cluster, on the fleet's three slices of the sample city."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import yaml
from support import fleet_report, require

#: The report's rows in the plan's order: Alpha and Beta trained together, Gamma alone.
ROWS = [("Alpha", "extract"), ("Beta", "extract"), ("Alpha+Beta", "train"),
        ("Alpha", "encode"), ("Beta", "encode"),
        ("Gamma", "extract"), ("Gamma", "train"), ("Gamma", "encode")]


@pytest.fixture
def together(fleet: Path) -> Path:
    """The fleet's run file (40 POIs a city) at 100 and 200 m (the default windows), with
    train and encode, Alpha and Beta trained together, one epoch."""
    body = yaml.safe_load(fleet.read_text())
    body |= {"radii": [100, 200], "steps": ["extract", "train", "encode"],
             "train": {"epochs": 1, "cities": ["Alpha", "Beta"]}, "encode": {"cell": "500m"}}
    fleet.write_text(yaml.safe_dump(body, sort_keys=False))
    return fleet


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statuses(stdout: str) -> list[tuple[str, str, str]]:
    return [(r["city"], r["step"], r["status"]) for r in fleet_report(stdout)["tasks"]]


def joint_config(data: Path) -> dict:
    return json.loads((data / "alpha" / "2024" / "models" / "default" / "config.json")
                      .read_text())


def test_listed_cities_train_one_run_and_encode_with_it(together: Path, cli,
                                                        tmp_path: Path) -> None:
    from aether.ml.encode import apply_ae, base_poi_means, load_run

    data = tmp_path / "t"
    first = cli("run", str(together), "--data-dir", str(data), "--scheduler", "threads")
    assert first.returncode == 0, first.stderr
    assert statuses(first.stdout) == [(c, s, "done") for c, s in ROWS]
    # one run, in the first city's folder, on both cities' tables
    config = joint_config(data)
    assert config["cities"] == ["alpha", "beta"]
    assert config["data"]["pairs"] == 80
    assert config["data"]["tables_sha256"] == {
        f"{c}/{name}": _sha(data / c / "2024" / name) for c in ("alpha", "beta")
        for name in ("pois.parquet", "poi_embeddings.parquet")}
    assert not (data / "beta" / "2024" / "models").exists()
    assert joint_config_of(data / "gamma")["city"] == "gamma"  # Gamma trained alone
    assert "cities" not in joint_config_of(data / "gamma")
    # both cities encoded, with the joint model: its AE head on each one's 100 m means
    run_dir = data / "alpha" / "2024" / "models" / "default"
    for slug in ("alpha", "beta"):
        city = data / slug / "2024"
        got = pd.read_parquet(city / "aether" / "default" / "pois.parquet")
        assert len(got) == len(gpd.read_parquet(city / "pois.parquet")) == 40
        assert (city / "aether" / "default" / "grid_500m.parquet").is_file()
        model = load_run(city, run_dir, slug=slug, year=2024)
        means = base_poi_means(city, 100)
        want = apply_ae(model, means[[f"A{i:02d}" for i in range(64)]].to_numpy())
        vectors = got[[c for c in got.columns if c.startswith("E")]]
        assert vectors.shape == want.shape
        assert list(got["poi_id"]) == list(means["poi_id"])
        np.testing.assert_allclose(vectors.to_numpy(np.float32), want, rtol=1e-5, atol=1e-6)

    # a second run does nothing
    again = cli("run", str(together), "--data-dir", str(data), "--scheduler", "threads")
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 8 tasks up to date" in again.stdout

    # Beta's POIs change: its extract, the joint train and both encodes; Gamma stays
    beta = tmp_path / "beta.parquet"
    gpd.read_parquet(beta).iloc[:-1].to_parquet(beta)
    changed = cli("run", str(together), "--data-dir", str(data), "--scheduler", "threads")
    assert changed.returncode == 0, changed.stderr
    redo = {("Beta", "extract"), ("Alpha+Beta", "train"), ("Alpha", "encode"),
            ("Beta", "encode")}
    assert statuses(changed.stdout) == [
        (c, s, "done" if (c, s) in redo else "up to date") for c, s in ROWS]
    assert joint_config(data)["data"]["pairs"] == 79
    assert len(pd.read_parquet(data / "beta" / "2024" / "aether" / "default" /
                               "pois.parquet")) == 39

    # `aether run status` reads the joint train's row from the first city's folder
    st = cli("run", "status", str(together), "--data-dir", str(data), "--json")
    assert st.returncode == 0, st.stderr
    rows = {(r["city"], r["step"]): r for r in json.loads(st.stdout)}
    assert rows[("Alpha+Beta", "train")]["last"] == "done"
    assert rows[("Alpha+Beta", "train")]["redo"] == "keep, unless its inputs changed"


def joint_config_of(city: Path) -> dict:
    return json.loads((city / "2024" / "models" / "default" / "config.json").read_text())


def test_a_failed_extract_skips_the_joint_train_only(together: Path, cli,
                                                     tmp_path: Path) -> None:
    """Beta's POI file is gone: its extract fails, the joint train and both encodes are
    skipped; Alpha's extract and Gamma's steps are done."""
    (tmp_path / "beta.parquet").unlink()
    r = cli("run", str(together), "--data-dir", str(tmp_path / "t"), "--scheduler", "threads")
    assert r.returncode == 1, r.stderr
    rows = fleet_report(r.stdout)["tasks"]
    got = {(t["city"], t["step"]): (t["status"], t["error"]) for t in rows}
    assert got[("Beta", "extract")][0] == "failed"
    for key in (("Alpha+Beta", "train"), ("Alpha", "encode"), ("Beta", "encode")):
        assert got[key] == ("skipped", "an earlier step did not finish")
    for key in (("Alpha", "extract"), ("Gamma", "extract"), ("Gamma", "train"),
                ("Gamma", "encode")):
        assert got[key][0] == "done"


def test_on_a_cluster_the_joint_train_waits_for_every_extract(together: Path, dask_cluster,
                                                               cli, tmp_path: Path) -> None:
    require("distributed")
    address, _ = dask_cluster(2)
    threads = cli("run", str(together), "--data-dir", str(tmp_path / "t"), "--scheduler",
                  "threads")
    assert threads.returncode == 0, threads.stderr
    spread = cli("run", str(together), "--data-dir", str(tmp_path / "c"), "--scheduler",
                 address)
    assert spread.returncode == 0, spread.stderr
    assert statuses(spread.stdout) == [(c, s, "done") for c, s in ROWS]
    want, got = joint_config(tmp_path / "t"), joint_config(tmp_path / "c")
    assert got["cities"] == ["alpha", "beta"]
    assert got["data"]["tables_sha256"] == want["data"]["tables_sha256"]
    for slug in ("alpha", "beta", "gamma"):
        for name in ("pois.parquet", "poi_embeddings.parquet"):
            assert _sha(tmp_path / "c" / slug / "2024" / name) == \
                   _sha(tmp_path / "t" / slug / "2024" / name)
        encoded = [pd.read_parquet(d / slug / "2024" / "aether" / "default" / "pois.parquet")
                   for d in (tmp_path / "t", tmp_path / "c")]
        pd.testing.assert_frame_equal(*encoded)  # one model: seeded, the same on any threads
    again = cli("run", str(together), "--data-dir", str(tmp_path / "c"), "--scheduler", address)
    assert again.returncode == 0 and "nothing to do: all 8 tasks up to date" in again.stdout


def _one_line(r) -> bool:
    return (r.returncode == 2 and r.stderr.startswith("aether: error:")
            and len(r.stderr.strip().splitlines()) == 1)


@pytest.mark.parametrize(("cities", "says"), [
    (["Alpha", "Atlantis"], "t.yaml:6: train.cities[1]: 'Atlantis' is not one of the file's "
                            "cities"),
    (["Alpha"], "t.yaml:4: train.cities: name two or more cities to train together"),
    (["Alpha", "Beta", "Alpha"], "t.yaml:4: train.cities: 'Alpha' named more than once"),
])
def test_bad_train_cities_are_one_line(tmp_path: Path, cli, cities, says) -> None:
    rf = tmp_path / "t.yaml"
    rf.write_text("steps: [extract, train]\n"
                  "train:\n"
                  "  epochs: 1\n"
                  "  cities:\n"
                  + "".join(f"    - {c}\n" for c in cities)
                  + "cities:\n  - name: Alpha\n  - name: Beta\n")
    r = cli("run", str(rf), "--data-dir", str(tmp_path / "d"))
    assert _one_line(r), r.stderr
    assert says in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_on_s3_the_joint_train_pulls_every_city_and_pushes_its_run(
        together: Path, dask_cluster, cli, s3, tmp_path: Path) -> None:
    """A data directory in (moto's) S3: run here, then on a two-worker cluster whose
    workers share no disk: each step pulls the city-years it reads into its own mirror."""
    require("distributed")
    from support import S3_BUCKET

    env, client = s3
    url = f"s3://{S3_BUCKET}/data"

    def body(rel: str) -> bytes:
        return client.get_object(Bucket=S3_BUCKET, Key=f"data/{rel}")["Body"].read()

    here = cli("run", str(together), "--data-dir", url, "--scheduler", "threads", env=env)
    assert here.returncode == 0, here.stderr
    assert statuses(here.stdout) == [(c, s, "done") for c, s in ROWS]
    config = json.loads(body("alpha/2024/models/default/config.json"))
    assert config["cities"] == ["alpha", "beta"]
    assert config["data"]["tables_sha256"] == {
        f"{c}/{name}": hashlib.sha256(body(f"{c}/2024/{name}")).hexdigest()
        for c in ("alpha", "beta") for name in ("pois.parquet", "poi_embeddings.parquet")}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix="data/")
    stored = {o["Key"] for p in pages for o in p.get("Contents", [])}
    assert not any(k.startswith("data/beta/2024/models/") for k in stored)
    for slug in ("alpha", "beta"):
        assert len(pd.read_parquet(io.BytesIO(body(f"{slug}/2024/aether/default/pois.parquet")))
                   ) == 40

    address, _ = dask_cluster(2, lambda i: env)
    again = cli("run", str(together), "--data-dir", url, "--scheduler", address, env=env)
    assert again.returncode == 0 and "nothing to do: all 8 tasks up to date" in again.stdout
    beta = tmp_path / "beta.parquet"
    gpd.read_parquet(beta).iloc[:-1].to_parquet(beta)
    changed = cli("run", str(together), "--data-dir", url, "--scheduler", address, env=env)
    assert changed.returncode == 0, changed.stderr
    redo = {("Beta", "extract"), ("Alpha+Beta", "train"), ("Alpha", "encode"),
            ("Beta", "encode")}
    assert statuses(changed.stdout) == [
        (c, s, "done" if (c, s) in redo else "up to date") for c, s in ROWS]
    assert json.loads(body("alpha/2024/models/default/config.json"))["data"]["pairs"] == 79
    assert len(pd.read_parquet(io.BytesIO(body("beta/2024/aether/default/pois.parquet")))) == 39
