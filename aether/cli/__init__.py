"""The ``aether`` command line: a package of thin shells, one module per command group. Each
parses options, builds the typed request, calls ``aether.api`` and shows the result.

Heavy libraries are imported inside the commands, so ``aether --help`` stays instant.
Every ``AetherError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from aether.cli import ask, emulator, extract, run, sample, train
from aether.cli._app import app, printable
from aether.errors import AetherError, use_surface

#: The command modules, registered on ``app`` when imported (listed so none is dropped).
COMMANDS = (extract, train, ask, run, sample, emulator)
__all__ = ["app", "main", "printable"]


def _version(value: bool) -> None:
    if value:
        from aether._version import VERSION

        typer.echo(f"aether {VERSION}")
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
        handler.setFormatter(_Printable("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Printable("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("aether")
    root.handlers[:] = [handler]
    root.setLevel(level)


class _Printable(logging.Formatter):
    """Log lines with the control characters their data may hold shown as escapes."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _fail(message: str, code: int = 2) -> None:
    print(printable(f"aether: error: {message}", one_line=True), file=sys.stderr)
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
    use_surface("cli")  # errors name flags here, keyword arguments in Python
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
