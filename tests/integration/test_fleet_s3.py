"""A run's data directory on object storage (`aether run --data-dir s3://…`), against a real
S3 API on loopback (moto's server) and a real Dask cluster whose two workers share no cache:
the tables equal the threaded local run's, a second run does nothing, the one-writer lease
holds, and a push commits its records last and only under the run's lease."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from support import S3_BUCKET as BUCKET
from support import fleet_report as report
from support import fleet_tables as tables
from support import on_exports, require

from aether.errors import BudgetError, InputError, LinkError, LockedError
from aether.execution.budget import EecuBudget
from aether.io.remote import LEASE_FILE, Lease, RemoteDir

require("s3fs")


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def remote_tables(client) -> dict[str, pd.DataFrame]:
    out = {}
    for key in keys(client, "data/"):
        if key.endswith("/poi_embeddings.parquet"):
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            out[key.split("/")[1]] = pd.read_parquet(io.BytesIO(body))
    return out


def test_a_cluster_run_on_s3_gives_the_threaded_tables(fleet: Path, dask_cluster, cli, s3,
                                                       tmp_path: Path) -> None:
    env, client = s3
    address, _ = dask_cluster(2, lambda i: env)
    url = f"s3://{BUCKET}/data"
    threads = cli("run", str(fleet), "--data-dir", str(tmp_path / "t"))
    assert threads.returncode == 0, threads.stderr
    spread = cli("run", str(fleet), "--data-dir", url, "--scheduler", address, env=env)
    assert spread.returncode == 0, spread.stderr
    want, got = tables(tmp_path / "t"), remote_tables(client)
    assert sorted(got) == ["alpha", "beta", "gamma"]
    for city in want:
        pd.testing.assert_frame_equal(want[city], got[city])
    stored = keys(client, "data/")
    assert all(f"data/{c}/2024/manifest.json" in stored for c in got)
    assert f"data/{LEASE_FILE}" not in stored  # released
    assert not any(k.endswith(".lock") or ".pull-" in k for k in stored)
    rep = report(spread.stdout)
    assert rep["data_dir"] == url
    assert len({r["worker"] for r in rep["tasks"]}) == 2
    assert all(r["out_dir"].startswith(url) for r in rep["tasks"])
    assert any(k.startswith("data/runs/") and k.endswith(".json") for k in stored)

    again = cli("run", str(fleet), "--data-dir", url, "--scheduler", address, env=env)
    assert again.returncode == 0 and "nothing to do: all 3 tasks up to date" in again.stdout, \
        again.stderr
    status = cli("run", "status", str(fleet), "--data-dir", url, "--json", env=env)
    assert status.returncode == 0, status.stderr
    rows = {r["city"]: r for r in json.loads(status.stdout)}
    assert rows["Beta"]["rows"] == 40 and rows["Beta"]["redo"].startswith("keep")

    # a table changed on the store behind aether's back is redone, and only that city
    client.put_object(Bucket=BUCKET, Key="data/beta/2024/poi_embeddings.parquet", Body=b"x")
    fixed = cli("run", str(fleet), "--data-dir", url, env=env)
    assert fixed.returncode == 0, fixed.stderr
    status = {r["city"]: r["status"] for r in report(fixed.stdout)["tasks"]}
    assert status == {"Alpha": "up to date", "Beta": "done", "Gamma": "up to date"}
    pd.testing.assert_frame_equal(remote_tables(client)["beta"], want["beta"])


def test_the_lease_keeps_one_writer_and_a_dead_one_expires(s3, fleet: Path, cli) -> None:
    env, client = s3
    remote = RemoteDir.of(f"s3://{BUCKET}/data")
    first = Lease(remote, ttl_s=60)
    with first.held():
        with pytest.raises(LockedError, match="holds s3://aether-fleet/data for"):
            Lease(remote).acquire()
        blocked = cli("run", str(fleet), "--data-dir", remote.url, env=env)
        assert blocked.returncode == 2 and len(blocked.stderr.strip().splitlines()) == 1
        assert "another aether run" in blocked.stderr
        first.check(first.token)
    assert keys(client, f"data/{LEASE_FILE}") == []

    dead = Lease(remote, ttl_s=0.5)
    dead.acquire()  # and never released: its process died
    time.sleep(1.0)
    taker = Lease(remote)
    taker.acquire()  # expired: taken over
    with pytest.raises(LockedError, match="no longer holds the lease"):
        taker.check(dead.token)
    with pytest.raises(LockedError, match="changed under this run"):
        dead.renew()  # the dead holder, back, cannot write over the new one
    taker.check(taker.token)
    taker.release()


def test_a_push_commits_last_and_only_under_the_lease(s3, tmp_path: Path) -> None:
    _, client = s3
    remote = RemoteDir.of(f"s3://{BUCKET}/data")
    local = tmp_path / "mirror"
    city = local / "x" / "2024"
    (city / ".aether-steps").mkdir(parents=True)
    (city / "pois.parquet").write_bytes(b"table v1")
    (city / "manifest.json").write_text('{"v": 1}')
    (city / ".aether-steps" / "train.json").write_text("{}")
    lease = Lease(remote)
    lease.acquire()
    assert remote.push(local, "x/2024", lease.token) == 3
    assert remote.push(local, "x/2024", lease.token) == 0  # nothing changed
    (city / "pois.parquet").write_bytes(b"table v2")
    (city / "manifest.json").write_text('{"v": 2}')
    with pytest.raises(LockedError):
        remote.push(local, "x/2024", "a run that lost its lease")
    body = {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            for k in keys(client, "data/x/")}
    assert body["data/x/2024/pois.parquet"] == b"table v2"  # the data went first
    assert body["data/x/2024/manifest.json"] == b'{"v": 1}'  # the record did not
    lease.release()

    # a fresh mirror pulls exactly the store, and a name leaving the folder is refused
    other = tmp_path / "other"
    assert remote.pull(other, "x/2024") == 3
    assert (other / "x/2024/manifest.json").read_text() == '{"v": 1}'
    assert remote.pull(other, "x/2024") == 0
    linked, outside = tmp_path / "linked", tmp_path / "outside"
    linked.mkdir()
    outside.mkdir()
    (linked / "x").symlink_to(outside)  # planted in a mirror slot: never written through
    with pytest.raises(LinkError, match="symbolic link"):
        remote.pull(linked, "x/2024")
    assert list(outside.iterdir()) == []
    client.put_object(Bucket=BUCKET, Key="data/x/2024/../../../escape", Body=b"!")
    with pytest.raises(InputError, match="outside its folder"):
        remote.pull(other, "x")
    assert not (tmp_path / "escape").exists()


def test_other_commands_refuse_a_url_data_dir_in_one_line(cli, tmp_path: Path) -> None:
    res = cli("extract", "--city", "Nowhere", "--data-dir", "s3://bucket/data", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "only `aether run` works on a remote data directory" in res.stderr
    assert not (tmp_path / "s3:").exists()


def test_a_ledger_in_the_store_is_one_for_every_process(s3) -> None:
    """Two budgets on one URL (two workers): each reads what the other charged, a task is
    counted once however often it is charged, and a halt stops both."""
    _, client = s3
    url = f"s3://{BUCKET}/data/runs/r1.eecu"
    a, b = EecuBudget(url, max_eecu_s=100.0), EecuBudget(url, max_eecu_s=100.0)
    a.charge("projects/p/operations/1", 30.0)
    b.charge("projects/p/operations/2", 20.0)
    b.charge("projects/p/operations/2", 20.0)  # read back twice: counted once
    assert a.spent() == b.spent() == 50.0
    assert len(keys(client, "data/runs/r1.eecu/")) == 2
    b.check()  # 50 spent + a mean task of 25 <= 100
    a.charge("projects/p/operations/3", 40.0)
    with pytest.raises(BudgetError, match="budget reached"):
        b.check()  # 90 + 30 > 100: no new task
    b.check(new_task=False)  # running ones may finish
    c = EecuBudget(f"s3://{BUCKET}/data/runs/r2.eecu")
    c.halt("Quota exceeded for quota metric 'EECU' and limit 'per month'")
    with pytest.raises(BudgetError, match="quota exhausted"):
        EecuBudget(f"s3://{BUCKET}/data/runs/r2.eecu").check(new_task=False)
    assert a.spent() == 90.0  # another run's ledger is another folder


def test_an_ee_budget_on_a_cluster_over_s3_stops_every_worker(
        fleet: Path, dask_cluster, cli, s3, sample_city, tmp_path: Path) -> None:
    """The budget of a run whose workers share only the bucket: one ledger in the store,
    the run stops within it (exit 3), and the next run finishes without starting a task
    twice."""
    from aether.testing.emulator import Emulator, running

    env, client = s3
    emu = Emulator(tiles=sample_city.tiles, exports=tmp_path / "exports")
    address, _ = dask_cluster(2, lambda i: env)
    url = f"s3://{BUCKET}/data"
    with running(emu) as ee_url:
        on_exports(fleet, ee_url, emu.exports)
        # the price of the three cities, measured on a local run first (same emulator)
        probe = cli("run", str(fleet), "--data-dir", str(tmp_path / "probe"))
        assert probe.returncode == 0, probe.stderr
        whole = [op["metadata"]["batchEecuUsageSeconds"] for op in emu.operations.values()]
        started = len(whole)
        budget_s = 1.5 * sum(whole) / 3  # a city and a half
        first = cli("run", str(fleet), "--data-dir", url, "--scheduler", address,
                    "--max-eecu-hours", f"{budget_s / 3600:.12f}", env=env)
        assert first.returncode == 3, first.stderr
        rep = report(first.stdout)
        assert rep["cities_left"] and "budget reached" in first.stdout
        ledger = [json.loads(client.get_object(Bucket=BUCKET, Key=k)["Body"].read())
                  for k in keys(client, f"data/runs/{rep['run_id']}.eecu/")]
        ops = list(emu.operations.values())[started:]
        assert sorted(r["eecu_s"] for r in ledger) == sorted(
            op["metadata"]["batchEecuUsageSeconds"] for op in ops)
        assert rep["eecu_hours"] == pytest.approx(sum(r["eecu_s"] for r in ledger) / 3600)
        assert len(ops) < started  # it did not do all three cities' work
        second = cli("run", str(fleet), "--data-dir", url, "--scheduler", address, env=env)
        assert second.returncode == 0, second.stderr
    assert len(emu.operations) - started == started  # each batch's task started once
