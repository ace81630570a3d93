"""What crosses into aether from the command line: help, no network, settings, logs, output."""

from __future__ import annotations

import re
import shutil
import socket
import time

import pytest

HELP_COMMANDS = [[], ["extract"], ["grid"], ["train"], ["encode"], ["evaluate"], ["query"],
                 ["similar"], ["serve"], ["run"], ["demo"], ["sample", "build"],
                 ["emulator", "serve"]]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("words", HELP_COMMANDS, ids=lambda w: " ".join(w) or "aether")
def test_short_help_and_plain_placeholders(cli, words) -> None:
    r = cli(*words, "-h")
    assert r.returncode == 0, r.stderr
    assert "Usage: aether" in r.stdout
    for typer_placeholder in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list", "{"):
        assert typer_placeholder not in r.stdout, (words, typer_placeholder)
    assert cli(*words, "--help").stdout == r.stdout


@pytest.mark.parametrize("command", ["extract", "grid"])
def test_help_shows_the_source_default(cli, command) -> None:
    out = " ".join(cli(command, "-h").stdout.split())
    assert re.search(r"--source SOURCE Embedding source: cog, ee or xee \[default ee; cog "
                     r"offline( or with --tiles)?\]", out), out
    assert "--ee-url EE_URL" in out


def test_overpass_unreachable_is_fast_and_names_the_offline_route(cli, sample_city,
                                                                   tmp_path) -> None:
    env = {"AETHER_OVERPASS_URL": f"http://127.0.0.1:{_closed_port()}/api",
           "AETHER_OSM_CACHE": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    r = cli("extract", "--bbox", "24.93,60.16,24.96,60.18", "--pois", "osm", "--source", "cog",
            "--tiles", str(sample_city.tiles), "--data-dir", str(tmp_path / "d"), env=env,
            timeout=180)
    took = time.perf_counter() - t0
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "Overpass (127.0.0.1) cannot be reached: no network" in lines[0]
    assert "--pois pbf:FILE" in lines[0] and "--pois FILE" in lines[0]
    for dump in ("urllib3", "HTTPConnectionPool", "Max retries", "object at 0x"):
        assert dump not in lines[0]
    assert took < 15, f"{took:.1f} s"  # osmnx alone waits 60 s for the status page


def test_nominatim_unreachable_suggests_offline_or_a_bbox(cli, tmp_path) -> None:
    env = {"AETHER_NOMINATIM_URL": f"http://127.0.0.1:{_closed_port()}/",
           "AETHER_OSM_CACHE": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    r = cli("extract", "--city", "Tampere", "--data-dir", str(tmp_path / "d"), env=env,
            timeout=180)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "Nominatim (127.0.0.1) cannot be reached" in lines[0]
    assert "--offline" in lines[0] and "--bbox" in lines[0]
    assert "HTTPConnectionPool" not in lines[0]
    assert time.perf_counter() - t0 < 15


def test_osm_cache_follows_data_dir_and_vv_logs_each_retry(osm_standin, cli, sample_city,
                                                           tmp_path) -> None:
    env = osm_standin.environment()  # endpoints only: the cache location is aether's choice
    env["AETHER_OSM_BACKOFF_S"] = "0.05"
    osm_standin.inject("504")
    try:
        data = tmp_path / "data"
        r = cli("-vv", "extract", "--city", "Helsinki", "--source", "cog", "--tiles",
                str(sample_city.tiles), "--data-dir", str(data), env=env, cwd=tmp_path)
    finally:
        osm_standin.clear_faults()
    assert r.returncode == 0, r.stderr
    assert list((data / "osm-cache").glob("*.json")), "no osmnx cache under --data-dir"
    assert not (tmp_path / "aether-data").exists()
    retries = [line for line in r.stderr.splitlines() if "retry 1 of 4" in line]
    assert retries and "HTTP 504" in retries[0], r.stderr
    quiet = cli("extract", "--city", "Helsinki", "--source", "cog", "--tiles",
                str(sample_city.tiles), "--data-dir", str(data), env=env, cwd=tmp_path)
    assert quiet.returncode == 0 and "retry" not in quiet.stderr


def test_query_output_has_no_terminal_escapes_and_figures_take_mathtext(sample_runs, cli,
                                                                        tmp_path) -> None:
    import geopandas as gpd

    city_dir, names, _ = sample_runs
    data = tmp_path / "data"
    copy = data / "helsinki" / "2024"
    shutil.copytree(city_dir, copy)
    pois = gpd.read_parquet(copy / "pois.parquet")
    pois["name"] = "Caf\x1b[31mé\x1b]0;owned\x07\x9b2J"
    pois.to_parquet(copy / "pois.parquet")
    stem = tmp_path / "q"
    r = cli("query", "a $_^$ b", "coffee", "--city", "Helsinki", "--model", names[1],
            "--k", "3", "--out", str(stem), "--no-tiles", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    assert r"Caf\x1b[31mé\x1b]0;owned\x07\x9b2J" in r.stdout  # seen, not obeyed
    for q, why in (("b \x1b[2J", r"a control character (\x1b)"),
                   ("caf\udce9", "bytes that are not UTF-8")):  # as Python gets b"caf\xe9"
        bad = cli("query", q, "--city", "Helsinki", "--model", names[1], "--data-dir",
                  str(data))
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and why in lines[0], bad.stderr
        assert "\x1b" not in bad.stderr
    for control in ("\x1b", "\x07", "\x9b"):
        assert control not in r.stdout
    assert stem.with_suffix(".png").stat().st_size > 10_000


def _unshare_works() -> bool:
    import subprocess

    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm (a private tmpfs mount)")
@pytest.mark.parametrize(("mount", "needle"), [
    ("mount -t tmpfs -o size=64k tmpfs {m}", "No space left on device"),
    ("mount -t tmpfs tmpfs {m} && mkdir {m}/d && mount -o remount,ro {m}",
     "Read-only file system"),
])
def test_full_or_read_only_data_dir_is_one_line_naming_the_path(sample_extract, tmp_path,
                                                                mount, needle) -> None:
    """ENOSPC and EROFS on a private tmpfs: one line naming the file, exit 2, no temp left."""
    import subprocess
    import sys

    m = tmp_path / "mnt"
    m.mkdir()
    pois = sample_extract / "pois.parquet"
    tiles = sample_extract.parents[1] / "_sample" / "helsinki" / "tiles"
    cmd = (f"{mount.format(m=m)} && {sys.executable} -m aether extract --city Helsinki "
           f"--offline --pois {pois} --tiles {tiles} --data-dir {m}/d; echo rc=$?; "
           f"find {m} -name '*.tmp'")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert "rc=2" in r.stdout and ".tmp" not in r.stdout, (r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("aether: error:"), r.stderr
    # the first write refused names its path inside the data dir (the lock, since every
    # writer takes it first)
    assert needle in lines[0] and f"{m}/d/" in lines[0]


def test_names_that_slugified_alike_get_their_own_folders_and_print_escaped(
        cli, sample_city, tmp_path) -> None:
    """``a\\x01b\\nc\\x1b[31m`` no longer reuses the folder of ``a b c 31m``, and its control
    characters are printed as escapes: on stdout, and in a one-line error."""
    pois = tmp_path / "pois.csv"
    pois.write_text("name,category,lon,lat\ncafe a,cafe,24.94,60.17\ncafe b,cafe,24.945,60.171\n")
    data = tmp_path / "data"
    common = ["--pois", str(pois), "--no-geocode", "--source", "cog", "--tiles",
              str(sample_city.tiles), "--data-dir", str(data)]
    plain = cli("extract", "--city", "a b c 31m", *common)
    hostile = cli("extract", "--city", "a\x01b\nc\x1b[31m", *common)
    assert plain.returncode == 0 and hostile.returncode == 0, (plain.stderr, hostile.stderr)
    folders = sorted(p.name for p in data.iterdir() if not p.name.startswith((".", "_")))
    assert len(folders) == 2 and "a-b-c-31m" in folders, folders
    assert r"a\x01b" in hostile.stdout and "\x1b" not in hostile.stdout + hostile.stderr
    bad = cli("extract", "--pois", str(tmp_path / "no\nsuch\x1b[31m.csv"), *common[2:])
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert r"no\nsuch\x1b[31m.csv" in lines[0] and "\x1b" not in bad.stderr
