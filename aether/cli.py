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
