"""MkDocs hook: render the CLI reference from the Typer app itself, so it cannot drift."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-reference -->"


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
        for name in sub:
            out += _render(sub[name], f"{path} {name}")
        return out
    help_text = (cmd.help or "").strip()
    out += [f"## `{path}`", "", help_text, ""]
    if cmd.params:
        out += [*_rows(cmd), ""]
    return out


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    import typer

    from aether.cli import app

    return markdown.replace(MARKER, "\n".join(_render(typer.main.get_command(app), "aether")))
