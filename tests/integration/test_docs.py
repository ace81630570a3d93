"""The docs cannot drift from the code: every command they show is run or parsed here.

- ```bash blocks of README.md and the docs pages (in nav order) are run as real subprocesses,
  in order, in one temporary working directory whose ``aether-data`` is ``AETHER_DATA_DIR``
  (a copy of ``pipelines/`` beside it, as in a clone). Each ``aether …`` command must exit 0
  and leave the files it promises; a line ending in ``&`` starts a server, which must print
  its URL and is stopped at the end. ``make X`` lines must name a Makefile target; nothing
  else belongs in a bash block.
- ```console blocks (``$ `` prompts) need the network or real accounts: not run, but every
  ``aether`` command in them must parse against the Typer app (the command exists, its
  ``--help`` works, every option it uses exists), and every ``python tests/benchmarks/X.py``
  must name a script and options it has.
- ```python blocks run too, in the same order and directory (``python -c``, exit 0), after
  the bash commands before them: the API examples use the tables those commands wrote. All of
  them must also compile (a fast check without the slow run).
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
import yaml
from overture_release import loopback_s3, write_release
from support import REPO, has_map_credits

from aether.cli import app
from aether.places.place import slugify

ROOT = REPO
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n"
                   r"(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
OSM_CREDIT = "© OpenStreetMap contributors"
AEF_CREDIT = ("The AlphaEarth Foundations Satellite Embedding dataset is produced by Google and "
              "Google DeepMind")


@dataclass(frozen=True)
class Block:
    page: str
    lang: str
    body: str


def pages() -> list[Path]:
    """README.md, then the docs pages in nav order (pages outside the nav last)."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    order = [DOCS / next(iter(item.values())) for item in nav]
    rest = sorted(p for p in DOCS.glob("*.md") if p not in order)
    return [ROOT / "README.md", *order, *rest]


def blocks(*langs: str) -> list[Block]:
    """The fenced blocks of these languages, in page order and in order within a page."""
    out = []
    for page in pages():
        for m in FENCE.finditer(page.read_text()):
            if m["lang"] in langs:
                indent = len(m["indent"])
                body = "\n".join(line[indent:] for line in m["body"].splitlines())
                out.append(Block(page.name, m["lang"], body))
    return out


def commands(block: Block) -> list[str]:
    """The block's command lines: continuations joined, prompts and blank lines dropped."""
    lines = block.body.replace("\\\n", " ").splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def argv(line: str) -> list[str]:
    """Words of a command line without its comment and a trailing ``&``."""
    words = shlex.split(line, comments=True)
    return words[:-1] if words and words[-1] == "&" else words


def aether_command(words: list[str]) -> tuple[list[str], Any]:
    """Resolve ``aether sub [sub] --opts`` against the Typer app; raises on a bad option.

    Groups are told by their ``commands``, not by class: Typer ≥ 0.22 carries its own copy
    of click, so ``isinstance(cmd, click.Group)`` is never true for its commands."""
    assert words[0] == "aether", words
    cmd: Any = typer.main.get_command(app)
    path, rest = [], words[1:]
    while hasattr(cmd, "commands"):
        default = getattr(cmd, "default_command", None)  # `aether run FILE` = `run start FILE`
        if default and rest and rest[0] not in cmd.commands:
            rest = [default, *rest]
        assert rest and rest[0] in cmd.commands, f"no command {' '.join(words[:len(path) + 2])}"
        path.append(rest[0])
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    assert path, words
    return path, cmd.make_context(" ".join(["aether", *path]), list(rest))


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, re.M))


# -- what each executed command must leave behind ------------------------------------------


def _data(params: dict, cwd: Path) -> Path:
    d = params.get("data_dir")
    return cwd / d if d else cwd / "aether-data"


def expected_files(path: list[str], params: dict, cwd: Path) -> list[Path]:
    data = _data(params, cwd)
    city = data / slugify(str(params.get("city") or "helsinki")) / str(params.get("year", 2024))
    match path:
        case ["sample", "build"]:
            return [data / "_sample" / "helsinki" / "tiles" / "aef_index.parquet"]
        case ["extract"]:
            return [city / "pois.parquet", city / "poi_embeddings.parquet", city / "manifest.json"]
        case ["grid"]:
            return [city / f"grid_embeddings_{params['cell']}.parquet"]
        case ["train"]:
            run = city / "models" / (params.get("run") or params["preset"])
            return [run / "model.safetensors", run / "summary.json", run / "metrics.csv"]
        case ["encode"]:
            runs = params.get("model") or [p.name for p in (city / "models").iterdir()]
            return [city / "aether" / r / "pois.parquet" for r in runs]
        case ["evaluate"]:
            stem = Path(params["task"]).stem
            return [city / "evaluation" / f"{stem}.md", city / "evaluation" / f"{stem}.json"]
        case ["query"]:
            stem = cwd / params["out"] if params.get("out") else city / "maps" / "query"
            return [stem.with_suffix(".html"), stem.with_suffix(".png")]
        case ["demo"]:
            return [city / "maps" / "demo_queries.html", city / "maps" / "demo_queries.png",
                    city / "evaluation" / "helsinki_landuse.md",
                    city / "models" / "paper" / "model.safetensors"]
        case ["run"]:
            return [data / "runs"]
    return []


PORT = re.compile(r"--port (\d+)")


def _start_server(words: list[str], env: dict, cwd: Path,
                  urls: dict[str, str]) -> subprocess.Popen:
    """Start a server command in the background (on the page it may run in the foreground);
    the page's fixed ``--port N`` (or none) runs as ``--port 0`` (a free port), and later
    lines' ``http://127.0.0.1:N`` are rewritten to the URL it printed (``urls``)."""
    line = shlex.join(words)
    shown = PORT.search(line)
    run = PORT.sub("--port 0", line) if shown else f"{line} --port 0"
    proc = subprocess.Popen(["bash", "-c", f"exec {run}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    assert first.startswith("http://127.0.0.1:"), (line, first, proc.poll())
    if shown:
        urls[f"http://127.0.0.1:{shown[1]}"] = first.strip()
    return proc


def _with_urls(line: str, urls: dict[str, str]) -> str:
    for shown, real in urls.items():
        line = line.replace(shown, real)
    return line


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run_python(block: Block, env: dict, cwd: Path, urls: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-c", _with_urls(block.body, urls)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{block.page}: python block\n{block.body}\n{r.stdout}\n{r.stderr}"


@pytest.fixture
def overture(sample_extract: Path, tmp_path: Path):
    """The public Overture release the docs name (``overture`` and ``overture:<release>``)
    as a loopback S3 bucket: the settings that point aether at it."""
    import geopandas as gpd

    from aether.pois.readers.overture import DEFAULT_RELEASE

    root = tmp_path / "overture"
    write_release(root, gpd.read_parquet(sample_extract / "pois.parquet"), DEFAULT_RELEASE)
    with loopback_s3(root) as env:
        yield env


@pytest.mark.slow
def test_bash_and_python_blocks_run_in_order(tmp_path, overture):
    """Every ```bash command and ```python block of README + docs, in order, in one data
    directory (Overture's bucket on loopback)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    shutil.copytree(ROOT / "pipelines", cwd / "pipelines")
    env = {**os.environ, "AETHER_DATA_DIR": str(cwd / "aether-data"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           **overture}
    targets = make_targets()
    servers: list[subprocess.Popen] = []
    urls: dict[str, str] = {}
    ran: list[tuple[str, float, float]] = []
    try:
        for block in blocks("bash", "python"):
            if block.lang == "python":
                t0, c0 = time.perf_counter(), _children_cpu()
                _run_python(block, env, cwd, urls)
                ran.append((f"[python block of {block.page}]", time.perf_counter() - t0,
                            _children_cpu() - c0))
                continue
            for line in commands(block):
                words = argv(line)
                if words[0] == "make":
                    assert set(words[1:]) <= targets, f"{block.page}: {line}: no such target"
                    continue
                if words[0] == ".venv/bin/aether":
                    words[0] = "aether"
                assert words[0] == "aether", (
                    f"{block.page}: {line!r}: bash blocks hold aether and make commands only "
                    "(show other commands in a console block)")
                path, ctx = aether_command(words)
                if line.endswith("&") or path[-1] == "serve":
                    servers.append(_start_server(words, env, cwd, urls))
                    continue
                t0, c0 = time.perf_counter(), _children_cpu()
                run_line = _with_urls(line.replace(".venv/bin/aether", "aether"), urls)
                r = subprocess.run(["bash", "-c", run_line],
                                   cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
                ran.append((line, time.perf_counter() - t0, _children_cpu() - c0))
                assert r.returncode == 0, f"{block.page}: {line}\n{r.stdout}\n{r.stderr}"
                for f in expected_files(path, ctx.params, cwd):
                    assert f.exists(), f"{block.page}: {line}: {f} missing\n{r.stdout}"
                if path == ["extract"] and str(ctx.params.get("pois")).startswith("overture"):
                    pois = pd.read_parquet(expected_files(path, ctx.params, cwd)[0])
                    assert len(pois) > 100 and pois["poi_id"].str.startswith("overture:").all()
                if path == ["query"]:
                    html = expected_files(path, ctx.params, cwd)[0].read_text()
                    assert has_map_credits(html), f"{block.page}: {line}: credits missing"
                if path == ["run"] and len([x for x in ran if " run " in f" {x[0]} "]) > 1:
                    assert "nothing to do" in r.stdout, r.stdout
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
    print("\n".join(f"{w:6.1f} s wall {c:6.1f} s CPU  {line}" for line, w, c in ran))
    print(f"total: {sum(r[1] for r in ran):.0f} s wall, {sum(r[2] for r in ran):.0f} s CPU")
    assert ran, "no bash commands found"


def test_console_commands_parse():
    """Commands that need the network are not run, but their commands and options exist."""
    seen: set[tuple[str, ...]] = set()
    targets = make_targets()
    n = 0
    for block in blocks("console"):
        for line in commands(block):
            words = argv(line)
            if words[0] == "aether":
                try:
                    path, _ = aether_command(words)
                except Exception as e:  # click's UsageError (Typer may carry its own click)
                    msg = e.format_message() if hasattr(e, "format_message") else str(e)
                    pytest.fail(f"{block.page}: {line}: {msg}")
                seen.add(tuple(path))
                n += 1
            elif words[0] == "make":
                assert set(words[1:]) <= targets, f"{block.page}: {line}"
            elif words[0] == "python" and words[1].startswith("tests/benchmarks/"):
                script = (ROOT / words[1]).read_text()
                for opt in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
                    assert f'"{opt}"' in script, f"{block.page}: {line}: {opt} unknown"
    assert n > 0
    for path in seen:
        r = subprocess.run([BIN / "aether", *path, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (path, r.stderr)


def test_python_blocks_compile():
    for i, block in enumerate(blocks("python")):
        compile(block.body, f"{block.page}[python {i}]", "exec")


def test_every_benchmark_is_documented():
    text = (DOCS / "benchmarks.md").read_text()
    for script in sorted((ROOT / "tests" / "benchmarks").glob("*.py")):
        assert f"tests/benchmarks/{script.name}" in text, f"{script.name} not in benchmarks.md"


def test_readme_picture_and_credits():
    readme = (ROOT / "README.md").read_text()
    img = DOCS / "img" / "query-map.png"
    assert "docs/img/query-map.png" in readme
    assert img.is_file() and img.stat().st_size < 200_000
    for page in (ROOT / "README.md", DOCS / "index.md", DOCS / "credits.md"):
        text = " ".join(page.read_text().split())
        assert OSM_CREDIT in text and AEF_CREDIT in text, page.name


# --- Quickstart §3 (your own city, no Earth Engine account) against nginx on loopback ---

OWN_CITY = "## 3. Your own city, no Earth Engine account"
PUBLIC_TILES = "https://data.source.coop/tge-labs/aef/v1/annual/"


def test_own_city_section_runs_against_loopback_tiles(sample_city, helsinki_pbf, nginx,
                                                      tmp_path):
    """Every command of the section runs: the public mirror is played by nginx serving the
    sample tiles in the public layout (also as the no-``--tiles`` default, via
    ``AETHER_TILES``), the PBF is the real Helsinki extract, the POI file a CSV in it."""
    import pandas as pd

    text = (DOCS / "quickstart.md").read_text()
    section = text[text.index(OWN_CITY):]
    section = section[:section.index("\n## ", len(OWN_CITY))]
    server = nginx(sample_city.tiles)
    w, s, e, n = sample_city.place.bbox
    csv = tmp_path / "my_pois.csv"
    pd.DataFrame({"name": ["a", "b", "c"], "amenity": ["cafe", "bar", "school"],
                  "lon": [w + (e - w) * f for f in (0.3, 0.5, 0.7)],
                  "lat": [s + (n - s) * f for f in (0.4, 0.5, 0.6)]}).to_csv(csv, index=False)
    swap = {PUBLIC_TILES: f"{server.url}/", "/data/aef/v1/annual": str(sample_city.tiles),
            "pbf:tartu.osm.pbf": f"pbf:{helsinki_pbf}", "my_pois.csv": str(csv)}
    lines = [c for m in FENCE.finditer(section) if m["lang"] == "console"
             for c in commands(Block("quickstart.md", "console", m["body"]))]
    assert len(lines) >= 4 and any("--tiles" not in c for c in lines)
    for i, line in enumerate(lines):
        for old, new in swap.items():
            line = line.replace(old, new)
        data = tmp_path / f"data-{i}"
        env = {**os.environ, "AETHER_TILES": server.url, "AETHER_DATA_DIR": str(data),
               "AETHER_CACHE_DIR": str(tmp_path / "cache")}
        r = subprocess.run(argv(line.replace("aether", str(BIN / "aether"), 1)),
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, (line, r.stderr)
        (table,) = data.rglob("poi_embeddings.parquet")
        assert (pd.read_parquet(table)["valid_fraction"] > 0).any(), line
    assert any(r.uri.endswith(".tiff") for r in server.requests())


def test_every_table_renders_as_a_table() -> None:
    """Each docs page through Python-Markdown with the site's table extension: a row that is
    not part of a table (a paragraph between two tables' rows, a missing header) comes out
    as a paragraph starting with a literal ``|``."""
    import markdown

    broken = {}
    for page in sorted((REPO / "docs").glob("*.md")):
        html = markdown.markdown(page.read_text(), extensions=["tables", "pymdownx.superfences"])
        bad = re.findall(r"<p>\s*\|[^\n]*", html)
        if bad:
            broken[page.name] = bad[0][:120]
    assert not broken, broken
