"""The run summary table's headers read as words, not `s`/`note`."""

from __future__ import annotations

from rich.console import Console

from aether.pipeline.scheduled import DONE, FAILED, RunReport, Step, summary_table


def test_headers_and_cells_are_readable() -> None:
    report = RunReport("r1", "sample.yaml", "/d", "2026-01-01T00:00:00")
    report.steps = [Step("Helsinki", "helsinki", 2024, "extract", status=DONE, seconds=3.25,
                         rows=4304),
                    Step("Espoo", "espoo", 2024, "train", status=FAILED, error="no POIs")]
    console = Console(width=120, record=True)
    console.print(summary_table(report))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "city" in line)
    assert header.split("┃")[1:-1] and [c.strip() for c in header.split("┃")[1:-1]] == [
        "city", "year", "step", "status", "rows", "seconds", "error or exports"]
    assert "3.2" in text and "4304" in text and "no POIs" in text
