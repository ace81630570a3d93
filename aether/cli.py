"""The ``aether`` command line. Thin: parse, call the library, show progress. No logic.

Heavy libraries are imported inside the commands, so ``aether --help`` stays instant.
Every ``AetherError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aether.errors import AetherError

app = typer.Typer(
    name="aether",
    help="Human-centred place embeddings: AlphaEarth aligned with Points of Interest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sample_app = typer.Typer(help="The offline sample city (central Helsinki).", no_args_is_help=True)
app.add_typer(sample_app, name="sample")

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env AETHER_DATA_DIR, default ./aether-data]"),
]

RadiusOpt = Annotated[
    list[float] | None,
    typer.Option("--radius", "-r", help="Buffer radius in metres (repeatable) [default 100, 200]"),
]


@app.command()
def extract(
    city: Annotated[str | None, typer.Option("--city", "-c", help="City name")] = None,
    offline: Annotated[bool, typer.Option(help="Use the offline sample city, no network")] = False,
    pois: Annotated[
        str | None,
        typer.Option(help="POI source: osm, pbf:PATH, file:PATH, or a path (read as file:)"),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Embedding source: cog, ee or xee [default ee; cog offline]")
    ] = None,
    tiles: Annotated[
        str | None, typer.Option(help="AlphaEarth COG directory or URL holding aef_index.parquet")
    ] = None,
    radius: RadiusOpt = None,
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
    ee_url: Annotated[
        str | None, typer.Option(envvar="AETHER_EE_URL", help="Earth Engine endpoint")
    ] = None,
    ee_project: Annotated[
        str | None,
        typer.Option(envvar=["AETHER_EE_PROJECT", "EE_PROJECT"], help="Cloud project for EE"),
    ] = None,
    ee_credentials: Annotated[
        Path | None, typer.Option(help="Service-account JSON key (default: persistent login)")
    ] = None,
    export: Annotated[
        str | None, typer.Option(help="Run as EE Export tasks: gcs://bucket/prefix or drive://dir")
    ] = None,
    export_read: Annotated[
        str | None,
        typer.Option(help="fsspec URL the export destination is read back from "
                          "[default gs://BUCKET; needed for Drive]"),
    ] = None,
    ee_batch: Annotated[
        int | None, typer.Option(help="Features per Earth Engine request [default 500]")
    ] = None,
    ee_concurrency: Annotated[
        int | None, typer.Option(help="Earth Engine requests in flight [default 8]")
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute even when up to date")] = False,
) -> None:
    """Per-POI AlphaEarth buffer means for a city, as Parquet tables."""
    from aether.config import DEFAULT_RADII
    from aether.config import data_dir as resolve_data_dir
    from aether.extract import ExtractRequest, run_extract
    from aether.progress import dask_progress

    if pois is not None and ":" not in pois.split("/")[0] and pois != "osm":
        pois = f"file:{pois}"
    opts = {"tiles": tiles, "ee_url": ee_url, "ee_project": ee_project,
            "ee_credentials": ee_credentials, "export": export, "export_read": export_read,
            "ee_batch": ee_batch, "ee_concurrency": ee_concurrency}
    place_opts = {"which_result": which_result, "osm_id": osm_id, "bbox": bbox,
                  "boundary": boundary, "yes": yes}
    poi_opts = {"name_column": name_column, "category_column": category_column,
                "top_category_column": top_category_column}
    req = ExtractRequest(
        city=city, data_dir=resolve_data_dir(data_dir), offline=offline, pois=pois,
        source=source, radii=tuple(radius or DEFAULT_RADII), year=year,
        source_options={k: v for k, v in opts.items() if v is not None},
        place_options={k: v for k, v in place_opts.items() if v not in (None, False)},
        poi_options={k: v for k, v in poi_opts.items() if v is not None}, force=force,
    )
    with dask_progress("buffer means"):
        res = run_extract(req)
    state = "up to date, nothing to do" if res.up_to_date else f"done in {res.seconds:.1f} s"
    typer.echo(f"{res.place.name}: {res.n_pois} POIs, {res.n_rows} rows — {state}")
    typer.echo(f"  {res.out_dir}")


@app.command("train")
def train_cmd(
    city: Annotated[str, typer.Option("--city", "-c", help="City name (as extracted)")],
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    preset: Annotated[str, typer.Option(help="paper (the method as published) or default")] = (
        "default"),
    epochs: Annotated[int | None, typer.Option(help="Epochs [preset: 100]")] = None,
    run: Annotated[str | None, typer.Option(help="Run name [default: the preset]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 42,
    device: Annotated[str | None, typer.Option(help="cpu or cuda [default: cuda if any]")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run with another config")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the AETHER heads on a city's extracted tables (resumes an interrupted run)."""
    from aether.config import check_year, city_dir
    from aether.config import data_dir as resolve_data_dir
    from aether.places import slugify
    from aether.tables import read_json
    from aether.train import SUMMARY_FILE, train

    def show(row: dict) -> None:
        val = f"  val r@10 {row['val_recall@10']:.3f}" if "val_recall@10" in row else ""
        typer.echo(f"epoch {row['epoch']:>3}  loss {row['loss']:.4f}  "
                   f"crossmodal {row['crossmodal']:.4f}{val}", err=True)

    where = city_dir(resolve_data_dir(data_dir), slugify(city), check_year(year))
    out = train(where, preset=preset, run_name=run, epochs=epochs, seed=seed, device=device,
                overwrite=overwrite, on_epoch=show)
    test = read_json(out / SUMMARY_FILE).get("test", {})
    if test:
        typer.echo(f"held-out text->POI: recall@1 {test['recall@1']:.3f}  "
                   f"recall@10 {test['recall@10']:.3f}  (n={test['n']})")
    typer.echo(f"  {out}")


@app.command()
def grid(
    city: Annotated[str | None, typer.Option("--city", "-c", help="City name")] = None,
    offline: Annotated[bool, typer.Option(help="Use the offline sample city, no network")] = False,
    cell: Annotated[str, typer.Option(help="Square cell size, e.g. 100m or 0.5km")] = "100m",
    source: Annotated[str | None, typer.Option(help="Embedding source: cog, ee or xee")] = None,
    tiles: Annotated[str | None, typer.Option(help="AlphaEarth COG directory or URL")] = None,
    pois: Annotated[str | None, typer.Option(help="POI source, if the place comes from it")] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Area-weighted AlphaEarth means over square grid cells covering a city."""
    from aether.config import data_dir as resolve_data_dir
    from aether.extract import ExtractRequest, run_grid
    from aether.progress import dask_progress

    opts = {"tiles": tiles} if tiles else {}
    req = ExtractRequest(city=city, data_dir=resolve_data_dir(data_dir), offline=offline,
                         pois=pois, source=source, year=year, source_options=opts)
    with dask_progress("grid cells"):
        path, n = run_grid(req, cell)
    typer.echo(f"{n} cells — {path}")


@sample_app.command("build")
def sample_build(
    data_dir: DataDirOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated embedding raster")] = 0,
    year: Annotated[int, typer.Option(help="Year the tiles are filed under")] = 2024,
) -> None:
    """Build (once) the offline sample city: Helsinki OSM + generated AlphaEarth tiles."""
    from aether.config import data_dir as resolve_data_dir
    from aether.sample import ensure_sample, sample_report

    city = ensure_sample(resolve_data_dir(data_dir), seed=seed, year=year)
    rep = sample_report(city)
    cal, grid = rep["calibration"], rep["grid"]
    typer.echo(f"{city.place.name} sample (seed {seed}, year {year}), {rep['crs']}, "
               f"{grid['width']}×{grid['height']} px, built {rep['built_at']} in "
               f"{rep['build_seconds']:.1f} s")
    typer.echo(f"  tiles: {city.tiles}\n  index: {city.tiles / 'aef_index.parquet'}\n"
               f"  pbf:   {city.pbf}")
    typer.echo(f"  neighbour cosine {cal['neighbour_cosine']:.3f} (real ≈ 0.95), random-pair "
               f"cosine {cal['random_pair_cosine']:.3f} (≈ 0.6), norm of 0.7 km² means: median "
               f"{cal['area_norm_median']:.3f} (real 0.915)")


emulator_app = typer.Typer(help="A local Earth Engine REST emulator.", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")


@emulator_app.command("serve")
def emulator_serve(
    tiles: Annotated[Path | None, typer.Option(help="AEF tile directory or index")] = None,
    exports: Annotated[Path | None, typer.Option(help="Folder standing in for GCS/Drive")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port)")] = 0,
    fault_rate: Annotated[float, typer.Option(help="Fraction of compute requests that fail")] = 0.0,
    fault_kinds: Annotated[str, typer.Option(help="Comma list of fault kinds [all]")] = "",
    fault_seed: Annotated[int, typer.Option(help="Seed of the fault draws")] = 0,
    fault_schedule: Annotated[str, typer.Option(help="N:KIND,... by request number")] = "",
    latency: Annotated[float, typer.Option(help="Seconds added to each compute request")] = 0.0,
    export_delay: Annotated[float, typer.Option(help="Seconds an export stays RUNNING")] = 0.0,
) -> None:
    """Serve the emulator on 127.0.0.1 and print its URL (Ctrl-C stops it)."""
    from aether.emulator import Emulator, Faults, serve

    faults = Faults.parse(fault_rate, fault_kinds, fault_seed, fault_schedule, latency)
    server = serve(Emulator(tiles, exports, faults, export_delay), port)
    typer.echo(f"http://127.0.0.1:{server.server_address[1]}", nl=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    """Console entry point: run the app, mapping typed errors to exit code 2."""
    try:
        app(standalone_mode=False)
    except AetherError as e:
        print(f"aether: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aether: aborted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except Exception as e:  # click usage errors carry their own exit code (2)
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
