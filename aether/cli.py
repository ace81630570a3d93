"""The ``aether`` command line. Thin: parse, call ``aether.api``, show the result. No logic.

Heavy libraries are imported inside the commands, so ``aether --help`` stays instant.
Every ``AetherError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from aether.errors import AetherError

app = typer.Typer(
    name="aether",
    help="Human-centred place embeddings: AlphaEarth aligned with Points of Interest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from aether import __version__

        typer.echo(f"aether {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version")
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True,
                          help="More log lines: -v info, -vv debug (every retry)")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors only")] = False,
    settings: Annotated[
        Path | None, typer.Option("--settings", metavar="FILE", envvar="AETHER_SETTINGS",
                                  help="YAML settings file (see docs/settings.md)")] = None,
) -> None:
    """Human-centred place embeddings: AlphaEarth aligned with Points of Interest."""
    if settings is not None:  # read by aether.settings, also in worker processes
        os.environ["AETHER_SETTINGS"] = str(settings)
    _logging(logging.ERROR if quiet else
             (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])


def _logging(level: int) -> None:
    """aether's log records on stderr: the CLI's handler, not the library's; rich on a
    terminal, one plain line per record otherwise (logs piped to a file stay greppable)."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aether")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _number(lo: float, hi: float = math.inf) -> Callable[..., object]:
    """An option callback refusing what is not finite or outside [lo, hi] (click's ranges let
    NaN through)."""

    def check(value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not (math.isfinite(v) and lo <= v <= hi):
                upper = "" if hi == math.inf else f" and {hi:g}"
                raise typer.BadParameter(f"{v} is not a number between {lo:g}{upper}")
        return value

    return check


sample_app = typer.Typer(help="The offline sample city (central Helsinki).", no_args_is_help=True)
app.add_typer(sample_app, name="sample")

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env AETHER_DATA_DIR, default ./aether-data]"),
]

RadiusOpt = Annotated[
    list[float] | None,
    typer.Option("--radius", "-r", callback=_number(1, 5000),
                 help="Buffer radius in metres, 1 to 5000 (repeatable) [default 100, 200]"),
]
EeUrlOpt = Annotated[
    str | None, typer.Option(help="Earth Engine endpoint [setting ee_url]")
]
EeProjectOpt = Annotated[
    str | None,
    typer.Option(help="Cloud project for EE [setting ee_project, env EE_PROJECT]"),
]
EeCredentialsOpt = Annotated[
    Path | None, typer.Option(help="Service-account JSON key (default: persistent login)")
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="Dask: threads, cluster[:N] (LocalCluster, N worker processes) "
                      "or tcp://host:port [setting dask_scheduler, default threads]"),
]


@app.command()
def extract(
    city: Annotated[str | None, typer.Option("--city", "-c", help="City name")] = None,
    offline: Annotated[bool, typer.Option(help="Use the offline sample city, no network")] = False,
    pois: Annotated[
        str | None,
        typer.Option(help="POI source: osm, pbf:PATH, file:PATH, or a path (read as file:)"),
    ] = None,
    no_geocode: Annotated[bool, typer.Option(
        "--no-geocode", help="Take the place from the POI file's extent (no Nominatim)")] = False,
    source: Annotated[
        str | None, typer.Option(help="Embedding source: cog, ee or xee "
                                      "[default ee; cog offline or with --tiles]")
    ] = None,
    tiles: Annotated[
        str | None,
        typer.Option(help="AlphaEarth COG directory, index or URL (a directory URL means its "
                          "aef_index.parquet) [default: AETHER_TILES, else the public AEF index "
                          "on data.source.coop]"),
    ] = None,
    radius: RadiusOpt = None,
    window: Annotated[list[str] | None, typer.Option(
        help="Square pixel windows by half-width, e.g. square:4,9 (9x9 and 19x19 px), or "
             "circle:100,200 (repeatable; beside --radius)")] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
    which_result: Annotated[
        int | None, typer.Option(help="Which geocoding result to use (1-based)")
    ] = None,
    osm_id: Annotated[str | None, typer.Option(help="OSM id of the boundary, e.g. R54224")] = None,
    bbox: Annotated[str | None, typer.Option(help="W,S,E,N in degrees instead of a name")] = None,
    boundary: Annotated[
        Path | None, typer.Option(help="Boundary polygon file instead of a name")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Accept a very large area")] = False,
    name_column: Annotated[str | None, typer.Option(help="POI file: name column")] = None,
    category_column: Annotated[str | None, typer.Option(help="POI file: category column")] = None,
    top_category_column: Annotated[
        str | None, typer.Option(help="POI file: top-category column")
    ] = None,
    ee_url: EeUrlOpt = None,
    ee_project: EeProjectOpt = None,
    ee_credentials: EeCredentialsOpt = None,
    export: Annotated[
        str | None, typer.Option(help="Run as EE Export tasks: gcs://bucket/prefix or drive://dir")
    ] = None,
    export_read: Annotated[
        str | None,
        typer.Option(help="fsspec URL the export destination is read back from "
                          "[default gs://BUCKET; needed for Drive]"),
    ] = None,
    ee_batch: Annotated[
        int | None, typer.Option(help="Features per Earth Engine request, 1 to 10000 "
                                      "[default 1000]")
    ] = None,
    ee_concurrency: Annotated[
        int | None, typer.Option(help="Earth Engine requests in flight, 1 to 64 [default 8]")
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute even when up to date")] = False,
    scheduler: SchedulerOpt = None,
) -> None:
    """Per-POI AlphaEarth buffer means for a city, as Parquet tables."""
    from aether import api
    from aether.execution.progress import dask_progress

    with dask_progress("buffer means"):
        res = api.extract(
            city, offline=offline, pois=pois, source=source, radii=_radii(radius, window),
            year=year, data_dir=data_dir, force=force, geocode=not no_geocode,
            scheduler=scheduler,
            place_options={"which_result": which_result, "osm_id": osm_id, "bbox": bbox,
                           "boundary": boundary, "yes": yes},
            poi_options={"name_column": name_column, "category_column": category_column,
                         "top_category_column": top_category_column},
            tiles=tiles, ee_url=ee_url, ee_project=ee_project, ee_credentials=ee_credentials,
            export=export, export_read=export_read, ee_batch=ee_batch,
            ee_concurrency=ee_concurrency)
    state = "up to date, nothing to do" if res.up_to_date else f"done in {res.seconds:.1f} s"
    typer.echo(f"{res.place.name}: {res.n_pois} POIs, {res.n_rows} rows — {state}")
    typer.echo(f"  {res.out_dir}")


def _radii(radius: list[float] | None, window: list[str] | None) -> tuple[float, ...]:
    """--radius circles and --window shapes as one list of ``radius_m`` keys."""
    from aether.core.windows import parse_window
    from aether.settings import DEFAULT_RADII

    shapes = tuple(r for spec in window or [] for r in parse_window(spec))
    return (*(radius or ()), *shapes) or tuple(DEFAULT_RADII)


@app.command("train")
def train_cmd(
    city: Annotated[str, typer.Option("--city", "-c", help="City name (as extracted)")],
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    preset: Annotated[str, typer.Option(help="paper (the method as published) or default")] = (
        "default"),
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs [preset: 100]")] = None,
    run: Annotated[str | None, typer.Option(help="Run name [default: the preset]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 42,
    device: Annotated[str | None, typer.Option(help="cpu or cuda [default: cuda if any]")] = None,
    threads: Annotated[int, typer.Option(
        min=0, max=1024, help="CPU threads for torch (0: the faster of 1 and 2, measured at start)"
    )] = 1,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Epochs between resume checkpoints"
                                                  )] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace a run with another config")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--set", help="Training option KEY=VALUE (repeatable), e.g. same_place_m=20")] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the AETHER heads on a city's extracted tables (resumes an interrupted run)."""
    from aether import api
    from aether.io.tables import read_json
    from aether.ml.train import SUMMARY_FILE, parse_options

    epochs_run: list[dict] = []
    out = api.train(city, preset=preset, year=year, run=run, epochs=epochs, seed=seed,
                    device=device, threads=threads, checkpoint_every=checkpoint_every,
                    overwrite=overwrite, options=parse_options(option or []),
                    on_epoch=epochs_run.append, data_dir=data_dir)
    if not epochs_run:
        typer.echo(f"model {out.name} is already trained with this config: kept "
                   "(--run NAME trains another, --overwrite replaces one with another config)")
    test = read_json(out / SUMMARY_FILE).get("test", {})
    if test:
        typer.echo(f"held-out text->POI: recall@1 {test['recall@1']:.3f}  "
                   f"recall@10 {test['recall@10']:.3f}  (n={test['n']})")
    typer.echo(f"  {out}")


@app.command()
def grid(
    city: Annotated[str | None, typer.Option("--city", "-c", help="City name")] = None,
    offline: Annotated[bool, typer.Option(help="Use the offline sample city, no network")] = False,
    cell: Annotated[
        str, typer.Option(help="Square cells (100m, 0.5km) or H3 cells (h3:9)")
    ] = "100m",
    source: Annotated[str | None, typer.Option(
        help="Embedding source: cog, ee or xee [default ee; cog offline]")] = None,
    tiles: Annotated[str | None, typer.Option(
        help="AlphaEarth COG directory, index or URL [default: AETHER_TILES, else the public "
             "AEF index]")] = None,
    pois: Annotated[str | None, typer.Option(help="POI source, if the place comes from it")] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    zarr: Annotated[
        bool, typer.Option(help="Also write the square grid as a (band, y, x) Zarr store")
    ] = False,
    ee_url: EeUrlOpt = None,
    ee_project: EeProjectOpt = None,
    ee_credentials: EeCredentialsOpt = None,
    scheduler: SchedulerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Area-weighted AlphaEarth means over grid cells (square or H3) covering a city."""
    from aether import api
    from aether.execution.progress import dask_progress

    with dask_progress("grid cells"):
        res = api.grid(city, cell=cell, offline=offline, pois=pois, source=source,
                       year=year, zarr=zarr, data_dir=data_dir, scheduler=scheduler,
                       tiles=tiles, ee_url=ee_url, ee_project=ee_project,
                       ee_credentials=ee_credentials)
    if res.reused:
        typer.echo(f"· {res.reused}", err=True)
    typer.echo(f"{res.n_cells} cells — {res.path}")


@app.command("run")
def run_cmd(
    runfile: Annotated[Path, typer.Argument(
        metavar="RUNFILE", help="Run file (YAML), e.g. pipelines/cities.yaml")],
    data_dir: DataDirOpt = None,
) -> None:
    """Do a run file's cities × years × steps once: skip what is done, redo what changed."""
    from rich.console import Console

    from aether import api
    from aether.pipeline.scheduled import StepState, summary_table

    report = api.run(runfile, data_dir, say=lambda s: typer.echo(f"· {s}", err=True))
    Console(width=120).print(summary_table(report))
    n = len(report.steps)
    if report.nothing_to_do:
        typer.echo(f"nothing to do: all {n} tasks up to date")
    else:
        typer.echo(f"{report.count(StepState.DONE)} done, "
                   f"{report.count(StepState.UP_TO_DATE)} up to date, "
                   f"{report.count(StepState.FAILED)} failed, of {n} tasks")
    typer.echo(f"  report: {report.path}")
    if report.failed:
        raise typer.Exit(1)


CityOpt = Annotated[str, typer.Option("--city", "-c", help="City name (as extracted)")]
ModelOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Run name or run directory (repeatable) [all runs]"),
]
CellOpt = Annotated[
    str | None, typer.Option(help="Grid cells: 100m, 0.5km or h3:9 [every grid there is]")
]


@app.command("import-checkpoint")
def import_checkpoint_cmd(
    path: Annotated[Path, typer.Argument(help="An official AETHER checkpoint (.pth)")],
    city: CityOpt,
    run: Annotated[str, typer.Option(help="Run name to create")] = "reference",
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    text_model: Annotated[str | None, typer.Option(
        help="Text model for queries [the checkpoint's, e.g. openai:text-embedding-3-large:384]"
    )] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Load an official AETHER checkpoint as a run of a city (then `aether encode` it)."""
    from aether.api import city_dir
    from aether.ml.reference import import_checkpoint
    from aether.ml.train import check_run_name

    where = city_dir(city, year, data_dir)
    out = import_checkpoint(path, where, check_run_name(run), text_model=text_model)
    typer.echo(f"imported {path.name} as run {out.name}\n  {out}")


@app.command()
def encode(
    city: CityOpt,
    model: ModelOpt = None,
    cell: CellOpt = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """AETHER vectors for a city's POIs and grid cells, at the scale each model was trained on."""
    from aether import api

    cells = None if cell is None else [cell]
    for name, res in api.encode(city, model, cells=cells, year=year, data_dir=data_dir).items():
        typer.echo(f"{name}: {res.n_pois} POIs, {res.n_cells} cells "
                   f"({res.n_masked} masked, kept as NaN)")
        for p in (res.pois_path, *res.grid_paths):
            typer.echo(f"  {p}")


@app.command("evaluate")
def evaluate_cmd(
    city: CityOpt,
    task: Annotated[str, typer.Option(help="Task YAML file, or a packaged task's name")],
    model: ModelOpt = None,
    seeds: Annotated[int, typer.Option(help="Number of seeds (of 42, 24, 7, 0, 100)")] = 5,
    shuffle: Annotated[bool, typer.Option(help="Train probes on shuffled labels (a check)")] = (
        False),
    protocol: Annotated[str, typer.Option(
        help="default (random + 250 m blocks, linear + MLP) or cityrep (10x10 blocks, "
             "MLP of 1,024 units, paired test vs raw AlphaEarth)")] = "default",
    cell: Annotated[str | None, typer.Option(
        help="Grid cells of a grid task: 100m, 0.5km or h3:9 [the task's]")] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Probe frozen embeddings on a downstream task: raw AlphaEarth vs AETHER vs POI text."""
    from aether import api
    from aether.evaluation.evaluate import rich_tables

    res = api.evaluate(city, task, model, protocol=protocol, seeds=seeds, shuffle=shuffle,
                       cell=cell, year=year,
                       data_dir=data_dir)
    _print(*rich_tables(res))
    typer.echo(f"  {res['paths']['markdown']}\n  {res['paths']['json']}")


@app.command()
def query(
    queries: Annotated[list[str], typer.Argument(metavar="QUERY...",
                                                 help="One or more text queries")],
    city: CityOpt,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Run [default, else any]")] = (
        None),
    k: Annotated[int, typer.Option(min=1, max=10_000, help="Top cells to return")] = 10,
    cell: Annotated[str | None, typer.Option(
        help="Grid cells: 100m, 0.5km or h3:9 [the smallest encoded]")] = None,
    out: Annotated[Path | None, typer.Option(help="Map file stem [<city>/maps/query]")] = None,
    tiles: Annotated[bool, typer.Option(help="OSM base tiles in the HTML (when reachable)")] = (
        True),
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Search a city with text: top-k grid cells, nearest POIs, an HTML map and a PNG."""
    from aether import api

    answer = api.search(queries, city=city, model=model, k=k, cell=cell, year=year,
                        data_dir=data_dir)
    _show(answer, "{query!r} (model {model}):")
    for path in answer.maps(out, tiles=tiles):
        typer.echo(f"  {path}")


def _print(*renderables: Any) -> None:
    """Rich tables on stdout, as wide as the terminal (120 columns when piped)."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    for r in renderables:
        console.print(r)
        console.print()


def _show(answer: Any, heading: str) -> None:
    """Top cells and their nearest POIs, without the terminal controls data may hold."""
    for res in answer.results:
        typer.echo(printable(heading.format(query=res.query, model=answer.run.name)))
        for row in res.top.itertuples():
            near = ", ".join(str(p["name"]) for p in row.nearest_pois)
            typer.echo(printable(f"  {row.rank:>2}. {row.score:.3f}  {row.lat:.5f},{row.lon:.5f}"
                                 f"  {near}"))


@app.command()
def similar(
    city: CityOpt,
    at: Annotated[list[str] | None, typer.Option(
        help="LON,LAT of a place to find more of (repeatable)")] = None,
    not_at: Annotated[list[str] | None, typer.Option(
        "--not", help="LON,LAT of a place to be unlike (repeatable)")] = None,
    poi: Annotated[list[str] | None, typer.Option(
        help="A POI id whose AETHER vector is an example (repeatable)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Run [default, else any]")] = (
        None),
    k: Annotated[int, typer.Option(min=1, max=10_000, help="Top cells to return")] = 10,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Find places like these: cosine to example places (2·pos − neg) over the encoded grid."""
    from aether import api
    from aether.query.similar import parse_lonlat

    answer = api.similar(city=city, at=[parse_lonlat(a) for a in at or []],
                         not_at=[parse_lonlat(a) for a in not_at or []], pois=poi or [],
                         model=model, k=k, year=year, data_dir=data_dir)
    _show(answer, "places like the examples (model {model}):")


@app.command()
def serve(
    city: CityOpt,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (other than loopback: reachable "
                                           "from the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port)", min=0, max=65535)] = 8000,
    tiles: Annotated[bool, typer.Option(help="OSM base tiles under the heat maps")] = True,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Ask a city anything in the browser: a local web app over its encoded grid."""
    import contextlib

    from aether import api
    from aether.query.serve import listen
    from aether.query.serve import serve as run_server

    state = api.web_app(city, model, tiles=tiles, year=year, data_dir=data_dir)
    sock, url = listen(host, port)
    typer.echo(f"{url}  ({', '.join(state.panels)}; Ctrl-C stops it)")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        run_server(state, host=host, sock=sock)


@app.command()
def demo(
    data_dir: DataDirOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs [presets: 100]")] = (
        None),
    seeds: Annotated[int, typer.Option(help="Evaluation seeds (of 42, 24, 7, 0, 100)")] = 5,
) -> None:
    """The whole chain on the offline sample city; prints where each output is."""
    from aether import api

    res = api.demo(data_dir, epochs=epochs, seeds=seeds,
                   say=lambda s: typer.echo(f"· {s}", err=True))
    for tables in res.tables.values():
        _print(*tables)
    typer.echo("Outputs:")
    for name, path in res.outputs.items():
        typer.echo(f"  {name:<28} {path}")


@sample_app.command("build")
def sample_build(
    data_dir: DataDirOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated embedding raster")] = 0,
    year: Annotated[int, typer.Option(help="Year the tiles are filed under")] = 2024,
) -> None:
    """Build (once) the offline sample city: Helsinki OSM + generated AlphaEarth tiles."""
    from aether import api
    from aether.sample.city import sample_report

    city = api.build_sample(data_dir, seed=seed, year=year)
    rep = sample_report(city)
    cal, grid = rep["calibration"], rep["grid"]
    typer.echo(f"{city.place.name} sample (seed {seed}, year {year}), {rep['crs']}, "
               f"{grid['width']}×{grid['height']} px, built {rep['built_at']} in "
               f"{rep['build_seconds']:.1f} s")
    typer.echo(f"  tiles: {city.tiles}\n  index: {city.tiles / 'aef_index.parquet'}\n"
               f"  pbf:   {city.pbf}")
    typer.echo(f"  neighbour cosine {cal['neighbour_cosine']:.3f} (real ≈ 0.95), random-pair "
               f"cosine {cal['random_pair_cosine']:.3f} (≈ 0.6), norm of 0.7 km² means: median "
               f"{cal['area_norm_median']:.3f} (real ≈ 0.9)")


emulator_app = typer.Typer(help="A local Earth Engine REST emulator.", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")


@emulator_app.command("serve")
def emulator_serve(
    tiles: Annotated[Path | None, typer.Option(help="AEF tile directory or index")] = None,
    exports: Annotated[Path | None, typer.Option(help="Folder standing in for GCS/Drive")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port on 127.0.0.1 (0: any free port)")] = 0,
    fault_rate: Annotated[float, typer.Option(
        callback=_number(0, 1), help="Fraction of compute requests that fail")] = 0.0,
    fault_kinds: Annotated[str, typer.Option(help="Comma list of fault kinds [all]")] = "",
    fault_seed: Annotated[int, typer.Option(help="Seed of the fault draws")] = 0,
    fault_schedule: Annotated[str, typer.Option(help="N:KIND,... by request number")] = "",
    latency: Annotated[float, typer.Option(
        callback=_number(0, 3600), help="Seconds added to each compute request")] = 0.0,
    export_delay: Annotated[float, typer.Option(
        callback=_number(0, 86_400), help="Seconds an export stays RUNNING")] = 0.0,
    deny_project: Annotated[list[str] | None, typer.Option(
        help="Project id refused as not registered for Earth Engine (repeatable)")] = None,
    duplicate_request_id: Annotated[str, typer.Option(
        help="Answer to a re-sent export requestId: 'operation' (the existing task) or "
             "'error' (409 ALREADY_EXISTS)")] = "operation",
) -> None:
    """Serve the emulator on 127.0.0.1 and print its URL (Ctrl-C stops it)."""
    from aether.testing.emulator import Emulator, Faults, serve

    faults = Faults.parse(fault_rate, fault_kinds, fault_seed, fault_schedule, latency)
    emulator = Emulator(tiles, exports, faults, export_delay,
                        denied_projects=tuple(deny_project or ()),
                        duplicate_request_id=duplicate_request_id)
    server = serve(emulator, port)
    typer.echo(f"http://127.0.0.1:{server.server_address[1]}", nl=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


#: C0/C1 control characters (ESC, BEL, CSI, ...) except tab and newline: a POI name or a
#: file name must not be able to move the cursor or retitle the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters removed (what is printed from data)."""
    return _CONTROL.sub("", text)


def _fail(message: str, code: int = 2) -> None:
    print(printable(f"aether: error: {message}"), file=sys.stderr)
    sys.exit(code)


def _plain_metavars(command: Any) -> Any:
    """``--city CITY``, ``QUERY...`` (nothing after flags) instead of typer's ``<str>``,
    ``<bool>`` and ``{queries}``: the help reads like any other command's."""
    for param in command.params:
        kind = getattr(param, "param_type_name", "")
        if kind == "argument":  # an instance override: typer has no option for this
            shown = param.metavar or str(param.name).upper()
            param.get_usage_pieces = lambda ctx, shown=shown: [shown]
            param.display_type_rich = lambda ctx: None
        elif kind == "option" and param.metavar is None:
            param.metavar = "" if param.is_flag or param.count else str(param.name).upper()
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)
    return command


def main() -> None:
    """Console entry point: run the app, mapping typed errors, usage errors and OS errors on
    files (disk full, read-only, permissions, not a directory) to one line and exit code 2."""
    try:
        command = _plain_metavars(typer.main.get_command(app))
        code = command(standalone_mode=False, prog_name="aether")
        if isinstance(code, int) and code:
            sys.exit(code)
    except AetherError as e:
        _fail(str(e), e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aether: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors: click's message, on one line, exit 2
        ctx = getattr(e, "ctx", None)
        see = f" — see `{ctx.command_path} --help`" if ctx is not None else ""
        _fail(f"{e.format_message()}{see}", getattr(e, "exit_code", 2))
    except OSError as e:  # a path that cannot be written or read: the user's to fix
        what = e.strerror or (str(e).splitlines() or [type(e).__name__])[0][:200]
        path = f": {e.filename}" if e.filename else ""
        _fail(f"{what}{path} — check the path (free space, permissions, a directory where "
              "one is expected)")
