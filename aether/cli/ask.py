"""`aether query`, `similar` and `serve`: asking a city's encoded grid, or your own vectors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aether.cli._app import DataDirOpt, ModelOpt, app, show_answer

#: ``--vectors`` of ``query``: a user's own AlphaEarth means per area, encoded by a run.
VectorsOpt = Annotated[list[Path] | None, typer.Option(
    help="Your own AlphaEarth means per area instead of a city: a JSON file of H3 cells, each "
         "with an 'embedding' list, or a (Geo)Parquet file (repeatable), encoded by --model "
         "(a run directory)")]
OptionalCity = Annotated[str | None, typer.Option(
    "--city", "-c", help="City name (as extracted); or --vectors")]


@app.command()
def query(
    queries: Annotated[list[str], typer.Argument(metavar="QUERY...",
                                                 help="One or more text queries")],
    city: OptionalCity = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Run [default, else any]; with --vectors a run directory")] = (
        None),
    k: Annotated[int, typer.Option(min=1, max=10_000, help="Top cells to return")] = 10,
    cell: Annotated[str | None, typer.Option(
        help="Grid cells: 100m, 0.5km or h3:9 [the smallest encoded]")] = None,
    out: Annotated[Path | None, typer.Option(help="Map file stem [<city>/maps/query]")] = None,
    tiles: Annotated[bool, typer.Option(help="OSM base tiles in the HTML (when reachable)")] = (
        True),
    vectors: VectorsOpt = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Search a city with text: top-k grid cells, nearest POIs, an HTML map and a PNG; or
    your own AlphaEarth means (``--vectors``) encoded by a trained run (``--model``)."""
    from aether import api

    answer = api.search(queries, city=city, model=model, k=k, cell=cell, year=year,
                        data_dir=data_dir, vectors=vectors or [])
    show_answer(answer, "{query!r} (model {model}):" if not vectors else
                "{query!r} (your vectors through model {model}):")
    if answer.city_dir is None and out is None:
        typer.echo("  (no maps: --out STEM draws them)")
        return
    for path in answer.maps(out, tiles=tiles):
        typer.echo(f"  {path}")


@app.command()
def similar(
    city: OptionalCity = None,
    at: Annotated[list[str] | None, typer.Option(
        help="LON,LAT of a place to find more of (repeatable)")] = None,
    not_at: Annotated[list[str] | None, typer.Option(
        "--not", help="LON,LAT of a place to be unlike (repeatable)")] = None,
    poi: Annotated[list[str] | None, typer.Option(
        help="A POI id whose AETHER vector is an example (repeatable)")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Run [default, else any]; with --vectors a run directory: your "
                              "vectors are compared in its space")] = None,
    k: Annotated[int, typer.Option(min=1, max=10_000, help="Top cells to return")] = 10,
    include_examples: Annotated[bool, typer.Option(
        help="Return the example cells themselves too")] = False,
    vectors: Annotated[list[Path] | None, typer.Option(
        help="Your own vectors per area instead of a city: a JSON file of H3 cells, each with "
             "an 'embedding' list, or a (Geo)Parquet file (repeatable: one search over all)")
    ] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Find places like these: cosine to example places (2·pos − neg) over the encoded grid,
    or over your own vectors (``--vectors``, as given or encoded by ``--model RUN_DIR``)."""
    from aether import api
    from aether.query.similar import parse_lonlat

    answer = api.similar(city=city, at=[parse_lonlat(a) for a in at or []],
                         not_at=[parse_lonlat(a) for a in not_at or []], pois=poi or [],
                         model=model, k=k, year=year, data_dir=data_dir,
                         include_examples=include_examples, vectors=vectors or [])
    whose = ("your vectors" + (", in model {model}'s space" if answer.run else "") if vectors
             else "model {model}")
    show_answer(answer, f"places like the examples ({whose}):")


@app.command()
def serve(
    city: OptionalCity = None,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (other than loopback: reachable "
                                           "from the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port)", min=0, max=65535)] = 8000,
    basemap: Annotated[str | None, typer.Option(
        help="Under the heat maps: city (its own OSM layers, offline), osm (online tiles) or "
             "none [city; none with --vectors]")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Answers computed at a time [the CPUs]")] = None,
    queue: Annotated[int, typer.Option(
        min=0, help="Requests that may wait for a worker; beyond them: 503 at once")] = 16,
    vectors: Annotated[list[Path] | None, typer.Option(
        help="Your own vectors per area instead of a city (repeatable): a panel of them as "
             "given, and one per --model (a run directory) encoded, where words work")] = None,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Ask a city anything in the browser: a local web app over its encoded grid, or over
    your own vectors (``--vectors``)."""
    import contextlib

    from aether import api
    from aether.query.serve import listen
    from aether.query.webapp import serve as run_server

    state = api.web_app(city, model, basemap=basemap, year=year, data_dir=data_dir,
                        workers=workers, queue=queue, vectors=vectors or [])
    sock, url = listen(host, port)
    typer.echo(f"{url}  ({', '.join(state.panels)}; Ctrl-C stops it)")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        run_server(state, host=host, sock=sock)
