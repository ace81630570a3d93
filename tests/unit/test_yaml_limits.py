"""User YAML (run, task, settings files): alias and size budgets, UTF-8, unset ${VAR}."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from aether.errors import ConfigError
from aether.evaluation.tasks import load_task
from aether.pipeline.runfile import load_run_file

#: The nested-alias run file from the report: 430 bytes that expand to 9^9 strings.
BOMB = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["cities: [{name: Oslo}]"]) + "\n"


def test_bomb_is_about_430_bytes() -> None:
    assert 420 <= len(BOMB.encode()) <= 440


@pytest.mark.parametrize("loader", [load_run_file, load_task])
def test_alias_bomb_is_refused_fast(tmp_path, loader) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml:[0-9]+: (more than 100 YAML aliases"
                                          r"|YAML expands to more than)") as e:
        loader(f)
    assert time.perf_counter() - t0 < 0.5
    assert "\n" not in str(e.value)


def test_few_aliases_still_work(tmp_path) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text("radii: &r [100, 200]\ncities:\n  - {name: Oslo, radii: *r}\n"
                 "  - {name: Bergen, radii: *r}\n")
    run = load_run_file(f)
    assert [c.radii for c in run.cities] == [[100.0, 200.0], [100.0, 200.0]]


def test_recursive_alias_is_refused(tmp_path) -> None:
    f = tmp_path / "loop.yaml"
    f.write_text("cities: &c [{name: Oslo, more: *c}]\n")
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_run_file(f)


def test_huge_file_is_refused(tmp_path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("cities: [{name: Oslo}]\n" + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="bytes, above"):
        load_run_file(f)


def test_not_utf8_names_file_and_line(tmp_path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("cities:\n  - name: Malm\xf6\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: run file is not UTF-8"):
        load_run_file(f)


def test_unset_variable_is_refused_with_file_and_line(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("AETHER_TEST_UNSET_PROJECT", raising=False)
    monkeypatch.setenv("AETHER_TEST_BUCKET", "my-bucket")
    f = tmp_path / "ee.yaml"
    f.write_text("source:\n  name: ee\n  options:\n    export: gcs://${AETHER_TEST_BUCKET}/x\n"
                 "    ee_project: ${AETHER_TEST_UNSET_PROJECT}\ncities: [{name: Oslo}]\n")
    with pytest.raises(ConfigError, match=r"ee.yaml:5: source.options.ee_project: "
                                          r"\$\{AETHER_TEST_UNSET_PROJECT\} is not set"):
        load_run_file(f, strict=True)
    monkeypatch.setenv("AETHER_TEST_UNSET_PROJECT", "p1")
    run = load_run_file(f, strict=True)
    assert run.source.options == {"export": "gcs://my-bucket/x", "ee_project": "p1"}


def test_misspelt_source_option_in_run_file(tmp_path) -> None:
    f = tmp_path / "typo.yaml"
    f.write_text("source:\n  name: ee\n  options: {ee_project: p}\ncities:\n  - name: Oslo\n"
                 "    source:\n      name: ee\n      options:\n        ee_bacth: 5\n")
    with pytest.raises(ConfigError) as e:
        load_run_file(f)
    msg = str(e.value)
    assert msg.startswith("typo.yaml:9: source ee: unknown option 'ee_bacth'"), msg
    assert "ee_batch" in msg and "\n" not in msg


def test_option_of_another_source_is_refused_when_strict(tmp_path) -> None:
    f = tmp_path / "other.yaml"
    f.write_text("source:\n  name: ee\n  options:\n    tiles: gs://b/aef\ncities: [{name: Oslo}]\n")
    assert load_run_file(f).source.options == {"tiles": "gs://b/aef"}
    with pytest.raises(ConfigError, match=r"other.yaml:4: source ee: unknown option 'tiles'"):
        load_run_file(f, strict=True)


def test_out_of_range_source_option_in_run_file(tmp_path) -> None:
    f = tmp_path / "zero.yaml"
    f.write_text("source:\n  name: ee\n  options:\n    ee_batch: 0\ncities: [{name: Oslo}]\n")
    with pytest.raises(ConfigError, match=r"zero.yaml:4: source ee: option ee_batch"):
        load_run_file(f)


def test_many_aliases_are_refused(tmp_path) -> None:
    f = tmp_path / "aliases.yaml"
    f.write_text("x: &x 1\nys: [" + ", ".join(["*x"] * 101) + "]\ncities: [{name: Oslo}]\n")
    with pytest.raises(ConfigError, match=r"aliases.yaml:\d+: more than 100 YAML aliases"):
        load_run_file(f)


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_non_regular_files_are_refused_before_reading(tmp_path, kind) -> None:
    import os

    from aether.yamlfile import load_yaml

    path = {"device": Path("/dev/zero"), "fifo": tmp_path / "fifo.yaml",
            "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would hang here
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"is a {kind if kind != 'fifo' else 'FIFO'}, "
                                          "not a regular file") as e:
        load_yaml(path, what="run file")
    assert time.perf_counter() - t0 < 1
    assert "\n" not in str(e.value)


def test_reads_at_most_the_budget_whatever_the_size_says() -> None:
    """/proc files are regular with st_size 0 but hold bytes: the read stops at the budget."""
    from aether.yamlfile import read_limited

    environ = Path("/proc/self/environ")  # aether runs on Linux (CI is Debian)
    assert environ.stat().st_size == 0 and environ.stat().st_size < len(environ.read_bytes())
    with pytest.raises(ConfigError, match=r"environ holds more than 8 bytes"):
        read_limited(environ, limit=8)
    assert len(read_limited(environ, limit=1_000_000)) > 8


@pytest.mark.parametrize(("text", "line", "first"), [
    ("cities: [{name: Oslo}]\nyears: [2023]\nyears: [2024]\n", 3, 2),
    ("cities:\n  - name: Oslo\n    radii: [100]\n    name: Bergen\n", 4, 2),
    ("cities: [{name: Oslo, name: Bergen}]\n", 1, 1),
])
def test_duplicated_key_is_refused_with_its_line(tmp_path, text, line, first) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup.yaml:{line}: key '\w+' is given twice "
                                          rf"\(first on line {first}\)"):
        load_run_file(f)


def test_merge_keys_are_not_duplicates(tmp_path) -> None:
    f = tmp_path / "merge.yaml"
    from aether.yamlfile import load_yaml

    f.write_text("base: &b {name: Oslo}\nmore: &m {years: [2023]}\ncities:\n"
                 "  - {<<: [*b, *m], years: [2024]}\n")
    data, _ = load_yaml(f)
    assert data["cities"] == [{"name": "Oslo", "years": [2024]}]


@pytest.mark.parametrize(("text", "where"), [
    ("radii: [-5]\ncities: [{name: Oslo}]\n", r"r.yaml:1: radii: radius -5 m is out of range"),
    ("radii: [100, -45]\ncities: [{name: Oslo}]\n", r"r.yaml:1: radii: radius -45 m .*square:P"),
    ("radii: [0.5]\ncities: [{name: Oslo}]\n", r"r.yaml:1: radii: radius 0.5 m is out of range"),
    ("cities:\n  - name: Oslo\n    radii: [6000]\n",
     r"r.yaml:3: cities\[0\].radii: radius 6000 m is out of range"),
    ("radii: ['square:4,,x']\ncities: [{name: Oslo}]\n", r"r.yaml:1: radii: bad window"),
    ("years: [1999]\ncities: [{name: Oslo}]\n", r"r.yaml:1: years\[0\]: year 1999 is out of range"),
    ("cities:\n  - name: Oslo\n    years: [2024, 2999]\n",
     r"r.yaml:3: cities\[0\].years\[1\]: year 2999 is out of range"),
    # found by tests/integration/test_fuzz_yaml.py: accepted, then failing at their step
    ("encode: {cell: 'h3:99'}\ncities: [{name: Oslo}]\n", r"r.yaml:1: encode.cell: .*h3:"),
    ("encode: {cell: -5m}\ncities: [{name: Oslo}]\n", r"r.yaml:1: encode.cell: "),
    ("train: {preset: ../x}\ncities: [{name: Oslo}]\n",
     r"r.yaml:1: train.preset: unknown preset '../x' \(use one of .*default"),
    ("train:\n  run: ../../etc\ncities: [{name: Oslo}]\n",
     r"r.yaml:2: train.run: '../../etc' is not a usable run name"),
])
def test_run_file_values_get_the_command_lines_checks(tmp_path, text, where) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=where) as e:
        load_run_file(f)
    assert "\n" not in str(e.value)


def test_run_file_windows_are_the_command_lines_specs(tmp_path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text("radii: [100, 'square:4,9']\ncities:\n  - {name: Oslo, radii: ['circle:50']}\n")
    run = load_run_file(f)
    assert run.radii == [100.0, -45.0, -95.0]
    assert run.cities[0].radii == [50.0]


def test_many_values_are_refused_before_nodes_are_built(tmp_path) -> None:
    """150,000 values in under 1 MB: refused from the parser's events (building the nodes
    took 6 s; found by the fuzz test), with the line where the budget ran out."""
    f = tmp_path / "many.yaml"
    f.write_text("cities:\n" + "  - {name: Oslo}\n" * 50_000)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"many.yaml:3333[0-9]: YAML holds more than 100,000"):
        load_run_file(f)
    assert time.perf_counter() - t0 < 1.5


@pytest.mark.parametrize(("raw", "needle"), [
    (b"cities: [{name: Os\x00lo}]\n", "r.yaml:1: invalid YAML: unacceptable character #x0000"),
    (b"cities:\n  - {name: \x1b[31m}\n", "r.yaml:2: invalid YAML: unacceptable character #x001b"),
    (b"cities: " + b"[" * 5000 + b"]" * 5000, "r.yaml:1: invalid YAML: "),
])
def test_characters_yaml_forbids_are_a_config_error(tmp_path, raw, needle) -> None:
    """Control characters were refused by PyYAML's reader before aether's handler was in
    place (a ReaderError traceback, found by the fuzz test)."""
    f = tmp_path / "r.yaml"
    f.write_bytes(raw)
    with pytest.raises(ConfigError) as e:
        load_run_file(f)
    assert needle in str(e.value) and "\n" not in str(e.value)
