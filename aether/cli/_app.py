"""The Typer app every command module registers on, the options they share, and how data is
printed (rich tables; no terminal controls from data)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

#: The order commands are listed in ``aether --help``: the chain's order, then the helpers.
ORDER = ("extract", "grid", "train", "import-checkpoint", "encode", "evaluate", "query",
         "similar", "serve", "run", "demo", "sample", "emulator")


class _Ordered(TyperGroup):
    """Commands in the chain's order, whichever module registered them first."""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(self.commands, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))


app = typer.Typer(
    cls=_Ordered,
    name="aether",
    help="Human-centred place embeddings: AlphaEarth aligned with Points of Interest.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def number(lo: float, hi: float = math.inf) -> Callable[..., object]:
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
emulator_app = typer.Typer(help="A local Earth Engine REST emulator.", no_args_is_help=True)
app.add_typer(emulator_app, name="emulator")

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env AETHER_DATA_DIR, default ./aether-data]"),
]

RadiusOpt = Annotated[
    list[float] | None,
    typer.Option("--radius", "-r", callback=number(1, 5000),
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


CityOpt = Annotated[str, typer.Option("--city", "-c", help="City name (as extracted)")]
ModelOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Run name or run directory (repeatable) [all runs]"),
]
CellOpt = Annotated[
    str | None, typer.Option(help="Grid cells: 100m, 0.5km or h3:9 [every grid there is]")
]


def print_tables(*renderables: Any) -> None:
    """Rich tables on stdout, as wide as the terminal (120 columns when piped)."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    for r in renderables:
        console.print(r)
        console.print()


def show_answer(answer: Any, heading: str) -> None:
    """Top cells and their nearest POIs, without the terminal controls data may hold."""
    for res in answer.results:
        typer.echo(printable(heading.format(query=res.query, model=answer.name)))
        if res.note:
            typer.echo(f"  note: {res.note}")
        for row in res.top.itertuples():
            # the nearest POIs; a user's own vectors have none: their cell and file instead
            near = (", ".join(str(p["name"]) for p in row.nearest_pois) if row.nearest_pois
                    else f"{row.cell_id} ({getattr(row, 'source', '')})")
            typer.echo(printable(f"  {row.rank:>2}. {row.score:.3f}  {row.lat:.5f},{row.lon:.5f}"
                                 f"  {near}"))


#: C0/C1 control characters (ESC, BEL, CSI, ...) except tab and newline: a POI name or a
#: file name must not be able to move the cursor or retitle the terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: The same with newline and tab: a one-line message stays one line.
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with terminal control characters shown as escapes (``\\x1b``, and ``\\n``
    when ``one_line``): what is printed from data is seen, never obeyed."""
    return (_CONTROL_LINE if one_line else _CONTROL).sub(
        lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
