"""`aether run`: a run file's cities × years × steps, once (scheduled runs), here or on a
Dask cluster; `aether run status`: where each step stands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from aether.cli._app import SchedulerOpt, app, print_tables, printable
from aether.errors import BudgetError


class _RunGroup(TyperGroup):
    """``aether run FILE`` is ``aether run start FILE``: a first word that names no command
    of the group is a run file."""

    default_command = "start"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


run_app = typer.Typer(cls=_RunGroup, no_args_is_help=True,
                      help="Scheduled runs of a run file (YAML): `aether run FILE`, "
                           "`aether run status FILE`.")
app.add_typer(run_app, name="run")

#: A run's data directory may be remote: a local folder or an fsspec URL (not a Path, which
#: would turn ``s3://b`` into ``s3:/b``).
RunDataDirOpt = Annotated[str | None, typer.Option(
    "--data-dir", help="Data directory: a folder, or an fsspec URL (s3://bucket/prefix, "
                       "gs://…) the cluster's workers share [env AETHER_DATA_DIR, run file "
                       "data_dir, default ./aether-data]")]

RunFileArg = Annotated[Path, typer.Argument(
    metavar="RUNFILE", help="Run file (YAML), e.g. pipelines/cities.yaml")]


@run_app.command("start")
def run_cmd(
    runfile: RunFileArg,
    data_dir: RunDataDirOpt = None,
    scheduler: SchedulerOpt = None,
    max_eecu_hours: Annotated[float | None, typer.Option(
        min=0, help="Earth Engine budget of the whole run, in EECU-hours of export tasks: "
                    "no task starts past it; exit 3 lists the cities left [run file: ee: "
                    "{max_eecu_hours}]")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what each step's next run would do (as `aether run status` "
                          "does), check the run file as a run would; write nothing")] = False,
) -> None:
    """Do a run file's cities × years × steps once: skip what is done, redo what changed
    (`aether run FILE` says the same). With --scheduler, cities run in parallel on a Dask
    cluster's workers."""
    from aether import api
    from aether.pipeline.scheduled import StepState, summary_table

    if dry_run:
        from aether.pipeline.status import plan_table, run_status

        rows = run_status(runfile, data_dir, strict=True)
        print_tables(plan_table(rows))
        redo = sum(r.redo.startswith("redo") for r in rows)
        typer.echo(f"dry run: {redo} of {len(rows)} steps would be done; the others are kept "
                   "unless their inputs changed; nothing written")
        return
    report = api.run(runfile, data_dir, say=lambda s: typer.echo(printable(f"· {s}"), err=True),
                     scheduler=scheduler, max_eecu_hours=max_eecu_hours)
    print_tables(summary_table(report))
    n = len(report.steps)
    if report.nothing_to_do:
        typer.echo(f"nothing to do: all {n} tasks up to date")
    else:
        kept = report.count(StepState.KEPT)
        typer.echo(f"{report.count(StepState.DONE)} done, "
                   + (f"{kept} kept, " if kept else "")
                   + f"{report.count(StepState.UP_TO_DATE)} up to date, "
                   f"{report.count(StepState.FAILED)} failed, of {n} tasks")
    if report.eecu_hours:
        typer.echo(f"  Earth Engine: {report.eecu_hours:.4g} EECU-hours")
    typer.echo(f"  report: {report.path}")
    if report.failed:
        raise typer.Exit(1)
    if report.cities_left:
        typer.echo(printable(f"budget reached: left for the next run: "
                             f"{', '.join(report.cities_left)}"))
        raise typer.Exit(BudgetError.exit_code)


@run_app.command("status")
def status_cmd(
    runfile: RunFileArg,
    data_dir: RunDataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list on stdout")] = False,
) -> None:
    """Where each city × year × step of a run file stands: the last run's word, rows, the
    data it was made from, and what the next run would redo. Reads only; takes no lock."""
    import dataclasses
    import json

    from aether.pipeline.status import run_status, status_table

    rows = run_status(runfile, data_dir)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    else:
        print_tables(status_table(rows))
