"""Evaluation results as text: Markdown and terminal tables, their titles and captions.

A caption says how to read its table (the spread shown, the sign of Δ, the paired test and its
Holm correction, training-seed replicates); the Markdown adds the result's provenance.
"""

from __future__ import annotations

from typing import Any

from aether.evaluation import probes

RAW = "AlphaEarth (raw)"


def markdown(result: dict[str, Any]) -> str:
    """The result table as Markdown: mean ± spread over seeds, improvement vs raw AlphaEarth
    and its paired-test p-value, the caption saying how to read them."""
    lines = [f"### {title(result)}", ""]
    if result.get("note"):
        lines += [f"*{result['note']}*", ""]
    lines += [f"*{caption(result)}*", ""]
    for split in dict.fromkeys(r["split"] for r in result["rows"]):
        lines += [f"**{split} split**", "",
                  markdown_table(_header(result), _cells(result, split)), ""]
    if result.get("provenance"):
        lines += [f"<sub>{provenance_line(result['provenance'])}</sub>", ""]
    return "\n".join(lines)


def provenance_line(p: dict[str, Any]) -> str:
    """Where the numbers come from, in one line under a table."""
    data = p.get("dataset") or {}
    index = data.get("tiles_index_sha256")
    return (f"aether {p['aether']} ({p.get('git_commit') or 'no git commit'}), Python "
            f"{p['python']}, torch {p['torch']}, numpy {p['numpy']}; data: "
            f"{data.get('extract') or 'no extract manifest'}, tiles index "
            f"{index[:12] if index else 'unknown'}; probe seeds "
            f"{', '.join(map(str, p['seeds']))}; {p['started']} → {p['finished']}")


def rich_tables(result: dict[str, Any]) -> list[Any]:
    """The result as rich tables for a terminal, one per split, the caption under each."""
    from rich.table import Table

    out = []
    note = f"{result['note']}. " if result.get("note") else ""
    for split in dict.fromkeys(r["split"] for r in result["rows"]):
        table = Table(*_header(result), title=f"{title(result)} — {split} split",
                      caption=note + caption(result), caption_justify="left")
        for row in _cells(result, split):
            table.add_row(*row)
        out.append(table)
    return out


def title(result: dict[str, Any]) -> str:
    protocol = result.get("protocol", "default")
    n = len(result["seeds"])
    return (f"{result['task']} ({result['kind']}, {result['n_units']} {result['unit']} "
            f"units{', SHUFFLED LABELS' if result['shuffled_labels'] else ''}; "
            f"{n} seed{'' if n == 1 else 's'}"
            f"{'' if protocol == 'default' else f'; {protocol} protocol'})")


def caption(result: dict[str, Any]) -> str:
    """How to read the table: the spread shown, the sign of the Δ column, the p-value."""
    head = result["metrics"][0]
    n = len(result["seeds"])
    directions = result.get("higher_is_better") or probes.METRICS[result["kind"]]
    lower = [m for m, up in directions.items() if not up]
    spread = ("mean over 1 seed (no spread)" if n == 1 else
              f"mean ± {_spread(result)} over {n} seeds")
    if result.get("replicates"):
        k = {len(v) for v in result["replicates"].values()}
        spread += (f"; rows marked ×{'/'.join(map(str, sorted(k)))} train seeds: over "
                   f"training seeds × probe seeds, paired with raw AlphaEarth's probe seeds")
    flipped = (f" ({', '.join(lower)}: lower is better, so a lower value gives a positive Δ)"
               if lower else "")
    return (f"{spread}. Δ{head} vs raw: relative change of the mean {head} against raw "
            f"AlphaEarth with the same probe and split; + is better, − is worse{flipped}. "
            f"p: paired t-test of {head} against raw AlphaEarth over the same seeds; "
            f"p Holm: the same, Holm-corrected over the rows of the table that have a p.")


def _spread(result: dict[str, Any]) -> str:
    """``std`` (population, as CityRep reports) or ``sd`` (sample, spatial-blocks)."""
    return str(result.get("spread", "std"))


def _header(result: dict[str, Any]) -> list[str]:
    head = result["metrics"][0]
    return ["method", "probe", *result["metrics"], f"Δ{head} vs raw", "p (paired t vs raw)",
            "p Holm"]


def _cells(result: dict[str, Any], split: str) -> list[list[str]]:
    """The rows of one split as text: mean (± spread when there are several seeds), Δ, p."""
    head = result["metrics"][0]
    spread = _spread(result) if len(result["seeds"]) > 1 else None
    rows = []
    for r in (r for r in result["rows"] if r["split"] == split):
        rel = r["relative_to_raw"].get(head)
        delta = "" if rel is None or r["method"] == RAW else f"{100 * rel:+.1f}%"
        test = r.get("paired_vs_raw", {}).get(head, {})
        p, p_holm = test.get("p"), test.get("p_holm")
        rows.append([r["method"], r["probe"], *(
            f"{r['metrics'][m]['mean']:.3f}"
            + ("" if spread is None else f" ± {r['metrics'][m][spread]:.3f}")
            for m in result["metrics"]), delta, "" if p is None else f"{p:.3g}",
            "" if p_holm is None else f"{p_holm:.3g}"])
    return rows


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table (floats with three decimals)."""
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
