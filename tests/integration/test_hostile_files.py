"""Hostile files handed to the real CLI (issue #25): each is one line on stderr, exit 2, within
seconds, and nothing is written — the data directory and everything beside it stay as they
were."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest


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
