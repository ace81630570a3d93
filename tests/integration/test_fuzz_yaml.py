"""Fuzzing the YAML files every command takes (issue #25): run files and settings files,
random and hostile (huge, nested aliases, merge keys, wrong types at every level, control
characters, bytes that are not UTF-8, several documents, Python tags, non-regular files),
handed to the real CLI in a subprocess. Each ends in exit 0 or exit 2 with one line on
stderr, never a traceback, and writes nothing (the data directory and the folder of the
inputs stay as they were).

Random files go through ``aether run FILE --dry-run`` (which checks a run file as a run does,
but never starts work, so a file that happens to be valid costs nothing) and through
``--settings FILE`` / ``AETHER_SETTINGS``; the hostile ones through ``aether run FILE`` too.
The generator is seeded: a failure names the seed and the file, and repeats.

The ~140 command lines run in one subprocess that forks a process per command line from an
interpreter that imported aether once (``tests/fork_cli.py``): each is still a real process
of the real entry point, with its own exit code, stderr, environment and working directory,
without a second of start-up each. Two hostile files also go through a plainly started
``python -m aether``, so that path is covered too.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from fork_cli import run_forked

#: The keys a run file knows, per level (a fuzzer that only invents keys would only ever
#: test the "unknown key" refusal).
RUN_KEYS = ["data_dir", "scheduler", "years", "radii", "pois", "poi_options", "source", "ee",
            "steps", "train", "encode", "cities"]
CITY_KEYS = ["name", "sample", "osm_id", "bbox", "boundary", "which_result", "yes", "pois",
             "poi_options", "years", "radii", "source"]
NESTED_KEYS = {"source": ["name", "options"], "ee": ["max_eecu_hours", "concurrency",
                                                      "budget_file"],
               "train": ["preset", "run", "epochs", "seed"], "encode": ["cell"],
               "poi_options": ["name_column", "category_column", "top_category_column"],
               "options": ["tiles", "ee_batch", "ee_project", "ee_url", "xee_chunk"]}
SETTINGS_KEYS = ["data_dir", "nominatim_url", "overpass_url", "osm_cache", "osm_backoff_s",
                 "network_timeout_s", "ee_url", "ee_project", "dask_scheduler",
                 "overture_release", "overture_root", "tiles", "cache_dir", "max_area_km2"]
N_RUN, N_SETTINGS = 64, 32


def _scalar(rng: random.Random) -> Any:
    return rng.choice([
        lambda: rng.randint(-5, 5), lambda: rng.choice([0, 1, 2024, 1999, 10**30, -10**20]),
        lambda: rng.choice([float("nan"), float("inf"), -0.0, 1e308, 100.0, -45.0, 0.5]),
        lambda: rng.choice([True, False, None]),
        lambda: rng.choice(["", "Helsinki", "cog", "ee", "xee", "osm", "square:4,,9",
                            "square:4", "circle:100", "100m", "h3:99", "latest", "default",
                            "../../etc", "/dev/zero", "${AETHER_FUZZ_UNSET}", "x" * 300,
                            "a\x01b\nc\x1b[31m", "Malmö", "東京", "file:nope.csv",
                            "overture:2099-01-01.0", "tcp://127.0.0.1:1", "cluster:0"]),
    ])()


def _value(rng: random.Random, key: str | None, depth: int, pool: list[Any]) -> Any:
    """A random value for ``key``: mostly of a plausible shape, often of a wrong one; values
    already made are reused now and then (safe_dump writes them as anchors and aliases)."""
    if pool and rng.random() < 0.08:
        return rng.choice(pool)
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        out: Any = _scalar(rng)
    elif roll < 0.7 or key in ("years", "radii", "steps", "cities", "bbox"):
        item_key = "city" if key == "cities" else None
        out = [_value(rng, item_key, depth + 1, pool) for _ in range(rng.randint(0, 4))]
        if key == "steps":
            out = rng.sample(["extract", "train", "encode", "grid", "nope"], rng.randint(0, 3))
    else:
        keys = (CITY_KEYS if key == "city" else NESTED_KEYS.get(key or "", RUN_KEYS))
        out = {}
        for _ in range(rng.randint(0, 4)):
            k = rng.choice(keys) if rng.random() < 0.85 else f"k{rng.randint(0, 9)}"
            out[k] = _value(rng, k, depth + 1, pool)
    if isinstance(out, list | dict) and out:
        pool.append(out)
    return out


def random_run_file(rng: random.Random) -> str:
    pool: list[Any] = []
    doc: dict[str, Any] = {}
    for key in rng.sample(RUN_KEYS, rng.randint(1, 6)):
        doc[key] = _value(rng, key, 1, pool)
    if rng.random() < 0.6:  # often a city that could be real: deeper checks are reached
        city = {"name": rng.choice(["Helsinki", "Oslo", "x"]), "sample": rng.random() < 0.5}
        if rng.random() < 0.5:
            city[rng.choice(CITY_KEYS)] = _value(rng, "city", 2, pool)
        doc["cities"] = [city]
    if "years" in doc and "latest" in str(doc["years"]):
        doc["years"] = [2024]  # `latest` asks the source for its newest year (the network)
    text = yaml.safe_dump(doc, allow_unicode=rng.random() < 0.5, sort_keys=False)
    return text.replace("latest", "lately")


#: A valid run file, and values that are wrong (or right) for each place in it: one or two
#: of them put into it reach the checks behind the parser (ranges, names, combinations).
BASE_RUN: dict[str, Any] = {
    "years": [2024], "radii": [100, 200], "source": {"name": "cog", "options": {}},
    "steps": ["extract", "train", "encode"], "train": {"epochs": 2, "seed": 1},
    "encode": {"cell": "100m"}, "ee": {"concurrency": 2},
    "cities": [{"name": "Helsinki", "sample": True}]}
MUTATIONS: dict[tuple[Any, ...], list[Any]] = {
    ("years",): [[2016], [2017], [2024, 2024], [1999], [2030], [10**30], [], [2024.5],
                 [True], ["2024"]],
    ("radii",): [[-5], [0], [100, 100], [1e9], [50.5], ["square:4"], [float("nan")],
                 ["square:4,,9"], [10], [None]],
    ("train", "epochs"): [0, -1, 10**12, 99999999999, 1.5, "2", None, 1],
    ("train", "seed"): [-1, 10**30, 99999999999999999999999, 2**32, "x", 0],
    ("train", "preset"): ["default", "nope", "", "../x"],
    ("train", "run"): ["../../etc", "a/b", "", "x" * 300, ".", "r\x00n"],
    ("source", "name"): ["nope", "ee", "xee", "", "COG"],
    ("source", "options"): [{"tiles": "/dev/zero"}, {"ee_batch": 0}, {"xee_chunk": -1},
                            {"bogus": 1}, {"tiles": "../../etc"}, None, []],
    ("cities", 0, "bbox"): [[24.9, 60.1, 25.0, 60.2], [1, 2, 3], [181, 0, 182, 1],
                            [-179.9, 89.9, 179.9, 90], [25, 60, 24, 59], [0, 0, 0, 0]],
    ("cities", 0, "name"): ["", "a\x01b\nc\x1b[31m", "x" * 300, "..", "/", "Malmö", 5],
    ("cities", 0, "years"): [[2025], [], [1999]],
    ("cities", 0, "radii"): [[-1], [5000], []],
    ("cities", 0, "which_result"): [0, -1, 10**9, "1"],
    ("steps",): [["extract", "extract"], ["encode"], ["grid"], [], ["nope"], "extract"],
    ("encode", "cell"): ["100m", "0m", "-5m", "h3:99", "1e9m", "infm", "nanm", 100, "square:4"],
    ("ee", "max_eecu_hours"): [-1, float("nan"), float("inf"), 0],
    ("ee", "concurrency"): [0, 10**6, -1, 1.5],
    ("cities",): [[], None, [{"name": "Helsinki", "sample": True}] * 2,
                  [{"name": "Helsinki", "sample": True}, {"name": "helsinki", "sample": True}]],
}


def mutated_run_file(rng: random.Random) -> str:
    """BASE_RUN with one to three of its values replaced (often by a wrong one)."""
    import copy

    doc = copy.deepcopy(BASE_RUN)
    for path in rng.sample(sorted(MUTATIONS, key=str), rng.randint(0, 3)):
        value = rng.choice(MUTATIONS[path]) if rng.random() < 0.8 else _scalar(rng)
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        if isinstance(target, dict | list) and (isinstance(target, dict)
                                                or path[-1] < len(target)):
            target[path[-1]] = value
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).replace("latest",
                                                                            "lately")


def random_settings_file(rng: random.Random) -> str:
    pool: list[Any] = []
    doc = {k: _value(rng, k, 2, pool) for k in rng.sample(SETTINGS_KEYS, rng.randint(1, 5))}
    if rng.random() < 0.2:
        doc[f"unknown_{rng.randint(0, 9)}"] = 1
    return yaml.safe_dump(doc, sort_keys=False)


#: Hostile files that no generator makes by chance: (name, content or a special kind).
BOMB = "\n".join(['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
                 + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
                    for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
                 + ["cities: [{name: Oslo}]"]) + "\n"
HOSTILE: list[tuple[str, str | bytes]] = [
    ("huge", "cities: [{name: Oslo}]\n# " + "x" * 1_100_000 + "\n"),
    ("many-nodes", "cities:\n" + "  - {name: Oslo}\n" * 50_000),  # < 1 MB, > 100k nodes
    ("alias-bomb", BOMB),
    ("merge-keys", "cities:\n  - &b {name: Helsinki, sample: true, years: [2024]}\n"
                   + "".join(f"  - {{<<: *b, name: Helsinki {i}, years: [{2017 + i % 8}]}}\n"
                             for i in range(40))),
    ("deep", "cities: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep-map", "cities: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n"),
    ("top-list", "- cities\n- Oslo\n"),
    ("top-scalar", "42\n"),
    ("null", "~\n"),
    ("empty", ""),
    ("two-docs", "cities: [{name: Oslo}]\n---\ncities: [{name: Bergen}]\n"),
    ("python-tag", "cities: [{name: !!python/object/apply:os.system ['true']}]\n"),
    ("nul-bytes", b"cities: [{name: Os\x00lo}]\n"),
    ("not-utf8", b"cities: [{name: Malm\xf6}]\n"),
    ("random-bytes", bytes(random.Random(7).randrange(256) for _ in range(4000))),
    ("tab-indent", "cities:\n\t- name: Oslo\n"),
    ("bad-types", "cities: {name: Oslo}\nyears: {a: 1}\nradii: yes\nsteps: extract\n"),
    ("huge-ints", "cities: [{name: Helsinki, sample: true}]\ntrain: {seed: 1e400, "
                  "epochs: 99999999999999999999}\nradii: [.inf]\nyears: [-0]\n"),
    ("dir", "<dir>"), ("fifo", "<fifo>"), ("dev-zero", "<link:/dev/zero>"),
    ("link-to-dir", "<link:/>"), ("dangling-link", "<link:/nonexistent/x.yaml>"),
]
#: Each hostile file as a run file (a real run and --dry-run) and as a settings file; the
#: merge-key file, a valid run file, not as a real run, which would do the work.
HOSTILE_CASES: list[tuple[str, str]] = [
    (name, how) for name, _ in HOSTILE for how in ("dry-run", "settings", "run")
    if not (name == "merge-keys" and how == "run")]


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / f"{name}.yaml"
    if content == "<dir>":
        path.mkdir()
    elif content == "<fifo>":
        os.mkfifo(path)
    elif isinstance(content, str) and content.startswith("<link:"):
        path.symlink_to(content[6:-1])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _shown(path: Path) -> str:
    return path.read_text(errors="replace")[:2000] if path.is_file() else "(special file)"


def _one_line_or_fine(rc: int | None, stderr: str, what: str) -> None:
    lines = stderr.strip().splitlines()
    assert rc in (0, 2), (what, rc, stderr[-3000:])
    assert "Traceback" not in stderr, (what, stderr[-3000:])
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("aether: error: "), (what, stderr)
        assert len(lines[0]) < 1000, (what, lines[0][:200])


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> dict[str, tuple[dict[str, Any], str]]:
    """Every case, run: ``{case id: (result, what the case is)}`` (see ``fork_cli``)."""
    folder = tmp_path_factory.mktemp("fuzz")
    data = tmp_path_factory.mktemp("fuzz-data")
    ok = folder / "ok-run.yaml"
    ok.write_text("source: {name: cog}\ncities: [{name: Helsinki, sample: true}]\n")
    cases: list[tuple[str, list[str], dict[str, str], str]] = []
    for seed in range(N_RUN):
        make = mutated_run_file if seed % 2 else random_run_file
        path = _write(folder, f"run-{seed}", make(random.Random(seed)))
        cases.append((f"run-{seed}", ["run", str(path), "--dry-run"], {},
                      f"seed {seed}: {_shown(path)}"))
    for seed in range(N_SETTINGS):
        path = _write(folder, f"settings-{seed}",
                      random_settings_file(random.Random(1000 + seed)))
        how: tuple[list[str], dict[str, str]] = (
            (["--settings", str(path)], {}) if seed % 2 else ([], {"AETHER_SETTINGS": str(path)}))
        cases.append((f"settings-{seed}", [*how[0], "run", "status", str(ok)], how[1],
                      f"seed {seed}: {_shown(path)}"))
    for name, content in HOSTILE:
        path = _write(folder, f"hostile-{name}", content)
        argvs = {"dry-run": ["run", str(path), "--dry-run"],
                 "settings": ["--settings", str(path), "run", "status", str(ok)],
                 "run": ["run", str(path)]}
        for how_id in (h for n, h in HOSTILE_CASES if n == name):
            argv = argvs[how_id]
            cases.append((f"hostile-{name}-{how_id}", argv, {}, f"{name}: {argv}"))
    results = run_forked(
        [{"argv": [*argv, "--data-dir", str(data)], "env": env, "cwd": str(folder),
          "timeout": 60} for _, argv, env, _ in cases],
        watch=[folder, data], timeout=900)
    return {cid: (res, what) for (cid, _, _, what), res in zip(cases, results, strict=True)}


def _check(fuzzed: dict[str, tuple[dict[str, Any], str]], cid: str) -> dict[str, Any]:
    res, what = fuzzed[cid]
    _one_line_or_fine(res["rc"], res["stderr"], what)
    assert res["changed"] == [], (what, "wrote or changed", res["changed"])
    return res


@pytest.mark.parametrize("seed", range(N_RUN))
def test_random_run_files_are_run_or_refused_in_one_line(fuzzed, seed) -> None:
    _check(fuzzed, f"run-{seed}")


@pytest.mark.parametrize("seed", range(N_SETTINGS))
def test_random_settings_files_are_read_or_refused_in_one_line(fuzzed, seed) -> None:
    _check(fuzzed, f"settings-{seed}")


def test_the_random_files_reach_past_the_parser(fuzzed) -> None:
    """A fuzzer whose files all fail on the first key tests one message: some random run
    files are valid (exit 0) and the refusals are of several kinds."""
    results = [fuzzed[f"run-{seed}"][0] for seed in range(N_RUN)]
    assert sum(r["rc"] == 0 for r in results) >= 3, [r["stderr"] for r in results]
    kinds = {r["stderr"].split(":", 3)[-1].split("—")[0].strip()[:40]
             for r in results if r["rc"] == 2}
    assert len(kinds) >= 8, kinds


@pytest.mark.parametrize(("name", "how"), HOSTILE_CASES,
                         ids=[f"{n}-{h}" for n, h in HOSTILE_CASES])
def test_hostile_yaml_is_one_line_as_run_and_settings_file(fuzzed, name, how) -> None:
    """Each hostile file as a run file (run, and --dry-run) and as a settings file: refused in
    one line (the merge-key file is a valid run file: --dry-run only, exit 0; an empty
    settings file sets nothing: fine)."""
    res = _check(fuzzed, f"hostile-{name}-{how}")
    refused = not ((name == "merge-keys" and how == "dry-run")
                   or (name in ("empty", "null") and how == "settings"))
    assert (res["rc"] == 2) is refused, (name, how, res["stdout"][-500:], res["stderr"])
    if name == "merge-keys" and how == "dry-run":
        assert "dry run: 41 of 41 steps would be done" in res["stdout"], res["stdout"]


def test_non_regular_files_through_a_plain_start(tmp_path, cli) -> None:
    """A FIFO as run file and /dev/zero as settings file, through ``python -m aether``
    started as a shell would: one line each, within seconds (no hang, no memory blow-up)."""
    fifo = _write(tmp_path, "fifo", "<fifo>")
    zero = _write(tmp_path, "zero", "<link:/dev/zero>")
    ok = tmp_path / "ok.yaml"
    ok.write_text("cities: [{name: Helsinki, sample: true}]\n")
    data = tmp_path / "data"
    r = cli("run", str(fifo), "--data-dir", str(data), timeout=60)
    _one_line_or_fine(r.returncode, r.stderr, "fifo")
    assert r.returncode == 2 and "FIFO" in r.stderr, r.stderr
    r = cli("run", "status", str(ok), "--data-dir", str(data),
            env={"AETHER_SETTINGS": str(zero)}, timeout=60)
    _one_line_or_fine(r.returncode, r.stderr, "dev-zero")
    assert r.returncode == 2 and "device" in r.stderr, r.stderr
    assert not data.exists()
