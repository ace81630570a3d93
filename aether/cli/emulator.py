"""`aether emulator serve`: the Earth Engine emulator on loopback (test infrastructure)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aether.cli._app import emulator_app, number


@emulator_app.command("serve")
def emulator_serve(
    tiles: Annotated[Path | None, typer.Option(help="AEF tile directory or index")] = None,
    exports: Annotated[Path | None, typer.Option(help="Folder standing in for GCS/Drive")] = None,
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port on 127.0.0.1 (0: any free port)")] = 0,
    fault_rate: Annotated[float, typer.Option(
        callback=number(0, 1), help="Fraction of compute requests that fail")] = 0.0,
    fault_kinds: Annotated[str, typer.Option(help="Comma list of fault kinds [all]")] = "",
    fault_seed: Annotated[int, typer.Option(help="Seed of the fault draws")] = 0,
    fault_schedule: Annotated[str, typer.Option(help="N:KIND,... by request number")] = "",
    latency: Annotated[float, typer.Option(
        callback=number(0, 3600), help="Seconds added to each compute request")] = 0.0,
    server_time: Annotated[float, typer.Option(
        callback=number(0, 3600), metavar="S_PER_EECU",
        help="Model EE's server time: answers computed once, each arriving after this many "
             "seconds per EECU-second of its work (0: off, answer when computed)")] = 0.0,
    export_delay: Annotated[float, typer.Option(
        callback=number(0, 86_400), help="Seconds an export stays RUNNING")] = 0.0,
    deny_project: Annotated[list[str] | None, typer.Option(
        help="Project id refused as not registered for Earth Engine (repeatable)")] = None,
    duplicate_request_id: Annotated[str, typer.Option(
        help="Answer to a re-sent export requestId: 'operation' (the existing task) or "
             "'error' (409 ALREADY_EXISTS)")] = "operation",
) -> None:
    """Serve the emulator on 127.0.0.1 and print its URL (Ctrl-C stops it)."""
    from aether.testing.emulator import Emulator, Faults, serve

    faults = Faults.parse(fault_rate, fault_kinds, fault_seed, fault_schedule, latency)
    emulator = Emulator(tiles, exports, faults, export_delay,
                        denied_projects=tuple(deny_project or ()),
                        duplicate_request_id=duplicate_request_id, server_time=server_time)
    server = serve(emulator, port)
    typer.echo(f"http://127.0.0.1:{server.server_address[1]}", nl=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
