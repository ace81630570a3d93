"""`aether run`: a run file's cities × years × steps, once (scheduled runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aether.cli._app import DataDirOpt, app


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
