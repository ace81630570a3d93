"""The CLI frame: instant help (no heavy imports) and typed errors as one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "ee", "xee", "sentence_transformers", "geopandas", "rasterio", "dask",
         "osmnx", "xarray")


def test_help_lists_commands_without_heavy_imports() -> None:
    code = (
        "import sys\n"
        "from aether.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "extract" in res.stdout and "sample" in res.stdout
    assert "HEAVY []" in res.stdout


def test_import_aether_and_its_api_names_stay_light() -> None:
    code = (
        "import sys, aether\n"
        "assert callable(aether.embed) and callable(aether.pois) and aether.Model\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in res.stdout


def test_usage_error_and_typed_error_exit_2(cli) -> None:
    usage = cli("extract", "--radius", "abc")
    assert usage.returncode == 2
    typed = cli("extract", "--city", "Atlantis", "--offline", "--data-dir", "/nonexistent/x")
    assert typed.returncode == 2
    assert typed.stderr.count("\n") == 1 and "Atlantis" in typed.stderr
    assert "Traceback" not in typed.stderr
