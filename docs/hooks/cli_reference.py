"""The CLI reference, rendered from the Typer app itself so it cannot drift.

``python docs/hooks/cli_reference.py`` writes it into the committed ``docs/cli.md`` (between
the markers, so the page reads on GitHub too); as an MkDocs hook it renders it afresh at build
time; ``tests/unit/test_cli_reference.py`` fails when the committed page is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- cli-reference -->"
END = "<!-- /cli-reference -->"
PAGE = Path(__file__).resolve().parents[1] / "cli.md"


def _rows(cmd: Any) -> list[str]:
    rows = ["| option | help | default |", "|---|---|---|"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            names = f"`{p.name.upper()}`"
        else:
            names = ", ".join(f"`{o}`" for o in [*p.opts, *getattr(p, "secondary_opts", [])])
        default = "" if p.default in (None, False, [], ()) else f"`{p.default}`"
        text = (p.help or "").replace("|", "\\|")
        rows.append(f"| {names} | {text} | {default} |")
    return rows


def _render(cmd: Any, path: str) -> list[str]:
    out: list[str] = []
    sub = getattr(cmd, "commands", None)
    if sub:
        if path == "aether" and cmd.params:  # the root's own options come first
            out += ["## `aether`", "", "Options before the command.", "", *_rows(cmd), ""]
        for name in cmd.list_commands(None):  # the order `--help` shows
            out += _render(sub[name], f"{path} {name}")
        return out
    help_text = (cmd.help or "").strip()
    out += [f"## `{path}`", "", help_text, ""]
    if cmd.params:
        out += [*_rows(cmd), ""]
    return out


def reference() -> str:
    """Every command's help and options as Markdown."""
    import typer

    from aether.cli import app

    return "\n".join(_render(typer.main.get_command(app), "aether")).strip() + "\n"


def with_reference(markdown: str) -> str:
    """The page with the text between the markers replaced by a fresh reference."""
    head, _, rest = markdown.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n\n{reference()}\n{END}{tail}"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return with_reference(markdown) if BEGIN in markdown else markdown


if __name__ == "__main__":
    sys.path.insert(0, str(PAGE.parents[1]))
    PAGE.write_text(with_reference(PAGE.read_text()))
    print(PAGE)
