"""`aether demo` and `aether sample build`: the offline sample city."""

from __future__ import annotations

from typing import Annotated

import typer

from aether.cli._app import DataDirOpt, app, print_tables, sample_app


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
        print_tables(*tables)
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
