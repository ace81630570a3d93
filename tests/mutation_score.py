"""The score of the last ``mutmut run`` (``make mutate``), per module, from mutmut's records.

Reads ``mutants/**/*.py.meta`` (one exit code per mutant: 1 killed, 0 survived, …, named by
mutmut's own table) and prints a Markdown table with the date, then the surviving mutants'
names (``mutmut show NAME`` prints each one's diff). Modules with no mutant checked are left
out, so the table covers what was run.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

COUNTED = ("killed", "timeout", "survived", "no tests")


def scores(root: Path) -> dict[str, Counter[str]]:
    """Per module (dotted name): how many mutants ended in each of mutmut's statuses."""
    out: dict[str, Counter[str]] = {}
    for meta in sorted(root.glob("**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        checked = Counter(status_by_exit_code[c] for c in codes.values() if c is not None)
        if checked:
            module = str(meta.relative_to(root)).removesuffix(".py.meta").replace("/", ".")
            out[module] = checked
    return out


def survivors(root: Path) -> list[str]:
    names = []
    for meta in sorted(root.glob("**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        names += [k for k, c in codes.items() if c is not None and status_by_exit_code[c]
                  in ("survived", "no tests")]
    return names


def table(by_module: dict[str, Counter[str]]) -> str:
    lines = [f"Mutation score, {dt.date.today().isoformat()} (killed or timed out / checked):",
             "", "| module | checked | killed | timeout | survived | no tests | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total: Counter[str] = Counter()
    for module, c in by_module.items():
        total += c
        lines.append(_row(module, c))
    lines.append(_row("**all**", total))
    return "\n".join(lines)


def _row(name: str, c: Counter[str]) -> str:
    n = sum(c.values())
    caught = c["killed"] + c["timeout"]
    return (f"| {name} | {n} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {100 * caught / n:.1f}% |")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    by_module = scores(root)
    if not by_module:
        sys.exit(f"no checked mutants under {root}/: run `make mutate` first")
    print(table(by_module))
    print("\nsurviving (`mutmut show NAME` for the diff):")
    print("\n".join(f"  {n}" for n in survivors(root)) or "  none")
