"""`aether extract` and `aether grid`: AlphaEarth means per POI buffer and per grid cell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aether.cli._app import (
    DataDirOpt,
    EeCredentialsOpt,
    EeProjectOpt,
    EeUrlOpt,
    RadiusOpt,
    SchedulerOpt,
    app,
    printable,
)


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
    ee_export_wait: Annotated[
        float | None, typer.Option(help="Seconds a finished export's file may take to appear "
                                        "at --export-read (a synced Drive) [default 600]")
    ] = None,
    ee_max_eecu_hours: Annotated[
        float | None, typer.Option(help="Budget of the export tasks in EECU-hours: no task "
                                        "starts past it, exit 3 (needs --export)")
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute even when up to date")] = False,
    scheduler: SchedulerOpt = None,
) -> None:
    """Per-POI AlphaEarth buffer means for a city, as Parquet tables."""
    from aether import api
    from aether.execution.progress import dask_progress
    from aether.places.query import PlaceQuery
    from aether.pois.load import PoiSpec

    place = PlaceQuery.of(which_result=which_result, osm_id=osm_id, bbox=bbox,
                          boundary=boundary, yes=yes)
    spec = PoiSpec.of(pois, name_column=name_column, category_column=category_column,
                      top_category_column=top_category_column)
    with dask_progress("buffer means"):
        res = api.extract(
            city, offline=offline, pois=spec, source=source, radii=_radii(radius, window),
            year=year, data_dir=data_dir, force=force, geocode=not no_geocode,
            scheduler=scheduler, place=place, tiles=tiles, ee_url=ee_url,
            ee_project=ee_project, ee_credentials=ee_credentials,
            export=export, export_read=export_read, ee_batch=ee_batch,
            ee_concurrency=ee_concurrency, ee_export_wait=ee_export_wait,
            ee_max_eecu_hours=ee_max_eecu_hours)
    state = "up to date, nothing to do" if res.up_to_date else f"done in {res.seconds:.1f} s"
    typer.echo(printable(f"{res.place.name}: {res.n_pois} POIs, {res.n_rows} rows — {state}"))
    typer.echo(f"  {res.out_dir}")


def _radii(radius: list[float] | None, window: list[str] | None) -> tuple[float, ...]:
    """--radius circles and --window shapes as one list of ``radius_m`` keys."""
    from aether.core.windows import parse_window
    from aether.settings import DEFAULT_RADII

    shapes = tuple(r for spec in window or [] for r in parse_window(spec))
    return (*(radius or ()), *shapes) or tuple(DEFAULT_RADII)


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
        typer.echo(printable(f"· {res.reused}"), err=True)
    state = " (up to date, nothing to do)" if res.up_to_date else ""
    typer.echo(f"{res.n_cells} cells{state} — {res.path}")
