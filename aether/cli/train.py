"""`aether train`, `import-checkpoint`, `encode` and `evaluate`: the model's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aether.cli._app import CellOpt, CityOpt, DataDirOpt, ModelOpt, app, print_tables


@app.command("train")
def train_cmd(
    city: Annotated[list[str], typer.Option(
        "--city", "-c", help="City name (as extracted); repeat to train on several cities "
                             "(the run lives in the first)")],
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    preset: Annotated[str, typer.Option(
        help="paper (the method as published), default, or pure (PURE's additions)")] = (
        "default"),
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs [preset: 100; pure: 10]")] = None,
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
    summary = read_json(out / SUMMARY_FILE)
    test = summary.get("test", {})
    if test:
        typer.echo(f"held-out text->POI: recall@1 {test['recall@1']:.3f}  "
                   f"recall@10 {test['recall@10']:.3f}  (n={test['n']})")
    else:
        typer.echo(f"no held-out POIs: trained on all {summary['pairs']['train']} "
                   "(--set test_fraction=0.1 holds some out)")
    typer.echo(f"  {out}")


@app.command("import-checkpoint")
def import_checkpoint_cmd(
    path: Annotated[Path, typer.Argument(help="An official AETHER checkpoint (.pth)")],
    city: CityOpt,
    run: Annotated[str, typer.Option(help="Run name to create")] = "reference",
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    text_model: Annotated[str | None, typer.Option(
        help="Text model for queries [the checkpoint's, e.g. openai:text-embedding-3-large:384]"
    )] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run of the same name")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Load an official AETHER checkpoint as a run of a city (then `aether encode` it)."""
    from aether.api import city_dir
    from aether.ml.reference import import_checkpoint
    from aether.ml.train import check_run_name

    where = city_dir(city, year, data_dir)
    out = import_checkpoint(path, where, check_run_name(run), text_model=text_model,
                            overwrite=overwrite)
    typer.echo(f"imported {path.name} as run {out.name}\n  {out}")


@app.command()
def encode(
    city: CityOpt,
    model: ModelOpt = None,
    cell: CellOpt = None,
    pois: Annotated[bool, typer.Option(
        "--pois", help="Encode the POIs only (no grid needed, none written)")] = False,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """AETHER vectors for a city's POIs and grid cells, at the scale each model was trained on."""
    from aether import api

    cells = None if cell is None else [cell]
    for name, res in api.encode(city, model, cells=cells, pois_only=pois, year=year,
                                data_dir=data_dir).items():
        where = "" if pois else f", {res.n_cells} cells"
        typer.echo(f"{name}: {res.n_pois} POIs{where} ({res.n_masked} masked, kept as NaN)")
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
        help="default (random + 250 m blocks, linear + MLP), cityrep (the CityRep "
             "benchmark's protocol as its code runs it, see docs/cityrep.md) or "
             "spatial-blocks (aether's earlier approximation of it)")] = "default",
    cell: Annotated[str | None, typer.Option(
        help="Grid cells of a grid task: 100m, 0.5km or h3:9 [the task's]")] = None,
    train_seeds: Annotated[int, typer.Option(
        help="Training seeds per model: trains replicates RUN-seedS when missing and "
             "reports each model over seeds x folds")] = 1,
    transfer: Annotated[bool, typer.Option(
        help="--model may name runs of other cities (their folders): held-out-city "
             "transfer, labelled so")] = False,
    year: Annotated[int, typer.Option(help="AlphaEarth year")] = 2024,
    data_dir: DataDirOpt = None,
) -> None:
    """Probe frozen embeddings on a downstream task: raw AlphaEarth vs AETHER vs POI text."""
    from aether import api
    from aether.evaluation.report import rich_tables

    res = api.evaluate(city, task, model, protocol=protocol, seeds=seeds, shuffle=shuffle,
                       cell=cell, train_seeds=train_seeds, year=year, data_dir=data_dir,
                       transfer=transfer)
    print_tables(*rich_tables(res))
    typer.echo(f"  {res['paths']['markdown']}\n  {res['paths']['json']}")
