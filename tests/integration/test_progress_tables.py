"""Progress and tables as a user sees them: bars on a terminal (a real pseudo-terminal), none
in a pipe; rich evaluate tables whose caption says how to read Δ; no ± at one seed; a warning
when training POIs do not fill one batch."""

from __future__ import annotations

import itertools
import os
import pty
import re
import subprocess
import sys

import geopandas as gpd
import pandas as pd
import pytest


def run_in_terminal(*args: str, timeout: float = 600, python: tuple[str, ...] = ("-m", "aether"),
                    columns: int = 200) -> tuple[int, str]:
    """The real CLI with stdin/stdout/stderr on a pseudo-terminal ``columns`` wide; (exit
    code, all output)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, *python, *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout=timeout)
    os.close(master)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


@pytest.mark.parametrize(("level", "shown"), [("WARNING", True), ("ERROR", False)])
def test_bars_follow_the_aether_log_level(level: str, shown: bool) -> None:
    """--quiet raises the aether logger to ERROR: then no bar, even on a terminal."""
    code, out = run_in_terminal(python=("-c", f"""
import logging, time
logging.getLogger("aether").setLevel(logging.{level})
from aether.execution.progress import bar
with bar("counting things", 3) as b:
    for _ in range(3):
        time.sleep(0.05)
        b.advance()
print("end")
"""))
    assert code == 0 and "end" in out, out
    assert ("counting things" in out and "3/3" in out) is shown, out


#: A notebook's kernel shell as IPython runs it, minus the ZMQ socket: Jupyter's kernel
#: shell class has this name (what rich's notebook check reads); display() output is
#: published through IPython's display machinery, here printed on stdout.
NOTEBOOK = """
import sys
from IPython.core.interactiveshell import InteractiveShell

class ZMQInteractiveShell(InteractiveShell):
    pass

ZMQInteractiveShell.instance().run_cell(sys.argv[1]).raise_error()
"""


def test_bars_are_shown_in_a_notebook_and_not_in_a_pipe() -> None:
    """In a notebook (stderr no terminal) aether's bars are drawn through IPython's display
    as rich's notebook widget; the same code in a plain pipe draws nothing."""
    cell = ("import sys, time\n"
            "from aether.execution import progress\n"
            "print('shown', progress.enabled(), 'tty', sys.stderr.isatty())\n"
            "with progress.bar('counting things', 3) as b:\n"
            "    for _ in range(3):\n"
            "        time.sleep(0.05)\n"
            "        b.advance()\n"
            "print('end')\n")
    r = subprocess.run([sys.executable, "-c", NOTEBOOK, cell], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout)
    assert "shown True tty False" in out and "counting things" in out and "3/3" in out, out
    assert out.rstrip().endswith("end"), out
    r = subprocess.run([sys.executable, "-c", cell], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "shown False" in r.stdout, r.stderr
    assert "counting" not in r.stdout + r.stderr


def test_text_encoding_shows_one_bar_counting_texts() -> None:
    """The first training's POI texts (minutes on a CPU) are counted by aether's bar, after
    one while the model loads; no library bar of its own (sentence-transformers' "Batches",
    transformers' "Loading weights") is drawn beside it."""
    code, out = run_in_terminal(python=("-c", """
from aether.ml.text import encode_texts
x = encode_texts([f"A place of cafe number {i}" for i in range(600)], batch_size=64)
print("encoded", x.shape)
"""))
    assert code == 0 and "encoded (600, 384)" in out, out
    assert "text model all-MiniLM-L6-v2: loading" in out, out
    assert "text model: encoding texts" in out and "600/600" in out, out
    assert "Batches" not in out and "Loading weights" not in out, out


def test_bars_and_tables_fit_80_columns(tmp_path) -> None:
    """At 80 columns a long description is cut, never the count ("12/12", not "0/…"), and a
    run's table is drawn in the terminal's width (no line the terminal would wrap)."""
    code, out = run_in_terminal(python=("-c", """
import time
from aether.execution.progress import bar
with bar("evaluate land_use: split × seed × method × probe, a long description", 12) as b:
    for _ in range(12):
        time.sleep(0.02)
        b.update(note="a rather long note about the current probe")
        b.advance()
print("end")
"""), columns=80)
    assert code == 0 and "end" in out, out
    lines = [ln for ln in re.split(r"[\r\n]", out) if ln.strip()]
    assert any("12/12" in ln for ln in lines), out
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    code, out = run_in_terminal("run", "status", "pipelines/sample.yaml", "--data-dir",
                                str(tmp_path / "data"), columns=80)
    assert code == 0 and "never run" in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]


@pytest.fixture(scope="module")
def landuse(sample_runs):
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    return city_dir, names, data_root


def test_train_shows_epochs_and_loss_on_a_terminal_only(sample_runs, cli) -> None:
    _, _, data_root = sample_runs
    code, out = run_in_terminal("train", "--city", "Helsinki", "--epochs", "3", "--run", "ux_tty",
                                "--data-dir", str(data_root))
    assert code == 0, out
    assert "train ux_tty: epochs" in out and re.search(r"3/3 .*loss \d\.\d{4}", out), out
    code, quiet = run_in_terminal("--quiet", "train", "--city", "Helsinki", "--epochs", "3",
                                  "--run", "ux_quiet", "--data-dir", str(data_root))
    assert code == 0 and "ux_quiet" in quiet, quiet  # its output path, and no bar
    assert "epochs" not in quiet and "loss" not in quiet, quiet
    piped = cli("train", "--city", "Helsinki", "--epochs", "3", "--run", "ux_pipe",
                "--data-dir", str(data_root))
    assert piped.returncode == 0, piped.stderr
    assert "epochs" not in piped.stderr and "loss" not in piped.stderr + piped.stdout
    # a second time: the finished model is kept, and the command says so
    again = cli("train", "--city", "Helsinki", "--epochs", "3", "--run", "ux_pipe",
                "--data-dir", str(data_root))
    assert again.returncode == 0, again.stderr
    assert "model ux_pipe is already trained with this config: kept" in again.stdout


@pytest.mark.slow
def test_ee_bar_counts_features_as_batches_finish(ee_server, sample_extract, tmp_path,
                                                  cli) -> None:
    n = 2 * len(pd.read_parquet(sample_extract / "pois.parquet"))  # POIs × 2 radii
    args = ("extract", "--offline", "--city", "Helsinki", "--source", "ee", "--ee-url",
            ee_server, "--ee-project", "demo", "--ee-batch", "200")
    code, out = run_in_terminal(*args, "--data-dir", str(tmp_path / "tty"))
    assert code == 0, out
    assert "Earth Engine: buffers" in out and f"{n}/{n}" in out, out
    counts = [int(c) for c in re.findall(rf"Earth Engine: buffers\D*?(\d+)/{n}", out)]
    # counted as batches finish (at most 200 features each), not 0 then all at once
    assert counts == sorted(counts) and counts[-1] == n
    steps = sorted(set(counts))
    assert len(steps) > 3 and max(b - a for a, b in itertools.pairwise(steps)) <= 8 * 200
    piped = cli(*args, "--data-dir", str(tmp_path / "pipe"))
    assert piped.returncode == 0, piped.stderr
    assert "Earth Engine" not in piped.stderr and "buffer means" not in piped.stderr


def test_evaluate_bar_per_split_seed_method_probe(landuse, cli) -> None:
    _, names, data_root = landuse
    code, out = run_in_terminal("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse",
                                "--seeds", "3", "--model", names[0],
                                "--data-dir", str(data_root))
    assert code == 0, out
    # 2 splits × 3 seeds × (raw, one model, text, raw ⊕ text) × 2 probes
    assert "evaluate helsinki_landuse: split × seed × method × probe" in out
    assert "48/48" in out, out


def test_evaluate_table_caption_and_no_spread_at_one_seed(landuse, cli) -> None:
    city_dir, names, data_root = landuse
    r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--seeds", "1",
            "--model", names[1], "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    assert "±" not in r.stdout and "| AETHER" not in r.stdout  # rich, not Markdown
    assert re.search(r"AETHER \(t7_default,[^│]*│\s*linear", r.stdout)
    text = " ".join(r.stdout.split())
    assert "mean over 1 seed (no spread)" in text
    assert ("Δmacro_f1 vs raw: relative change of the mean macro_f1 against raw AlphaEarth "
            "with the same probe and split; + is better, − is worse.") in text
    md = (city_dir / "evaluation" / "helsinki_landuse.md").read_text()
    assert "| AETHER (t7_default, default) | linear |" in md
    assert "±" not in md and "+ is better" in md
    two = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--seeds", "2",
              "--model", names[1], "--data-dir", str(data_root))
    assert two.returncode == 0 and "±" in two.stdout
    assert "mean ± std over 2 seeds" in " ".join(two.stdout.split())


def test_lower_is_better_metrics_say_the_sign_is_flipped() -> None:
    from aether.evaluation.report import caption

    text = caption({"metrics": ["kl", "l1"], "kind": "distribution", "seeds": [42, 24]})
    assert text.startswith("mean ± std over 2 seeds. Δkl vs raw:")
    assert "kl, l1: lower is better, so a lower value gives a positive Δ" in text


def test_training_on_five_pois_warns_how_many_are_needed(sample_city, sample_extract, tmp_path,
                                                         cli) -> None:
    pois = gpd.read_parquet(sample_extract / "pois.parquet")
    n = len(pois)
    few = tmp_path / "few.geojson"
    pois.iloc[[0, n // 4, n // 2, 3 * n // 4, n - 1]][["name", "category", "top_category",
                                                      "geometry"]].to_file(few)
    data = tmp_path / "data"
    r = cli("extract", "--offline", "--city", "Helsinki", "--pois", f"file:{few}", "--source",
            "cog", "--tiles", str(sample_city.tiles), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    r = cli("train", "--city", "Helsinki", "--epochs", "1", "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if "training POIs" in x)
    # 5 POIs, one held out for the test split (test_fraction 0.1, at least one)
    assert "only 4 training POIs" in line
    # default preset: batch_size 512, test_fraction 0.1 -> ceil(512 / 0.9) = 569
    assert "at least one full batch (512)" in line and "about 569 POIs extracted" in line
    assert "Loading weights" not in r.stderr  # transformers' bar is off too, off a terminal
    # that city has a model but no grid: the query error names both steps, with the city
    q = cli("query", "coffee", "--city", "Helsinki", "--data-dir", str(data))
    assert q.returncode == 2 and len(q.stderr.strip().splitlines()) == 1, q.stderr
    assert ("run `aether grid --city Helsinki`, then "
            "`aether encode --city Helsinki --model default`") in q.stderr
