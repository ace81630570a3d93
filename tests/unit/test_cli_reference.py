"""docs/cli.md holds the CLI reference as the app renders it now: regenerate it with
``python docs/hooks/cli_reference.py`` when a command or option changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", PAGE.parent / "hooks" /
                                                  "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_cli_reference_is_current() -> None:
    hook = _hook()
    text = PAGE.read_text()
    assert hook.with_reference(text) == text, "stale: run python docs/hooks/cli_reference.py"


def test_reference_names_every_command_and_option() -> None:
    text = PAGE.read_text()
    for command in ("extract", "train", "grid", "run start", "run status", "encode", "evaluate",
                    "query", "similar",
                    "serve", "demo", "sample build", "emulator serve"):
        assert f"## `aether {command}`" in text
    assert "| `--ee-batch` | Features per Earth Engine request, 1 to 10000 [default 1000] |" in text
    assert "| `--version` |" in text and "| `--quiet`, `-q` |" in text
