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


def test_a_fleet_is_counted_and_only_unfinished_steps_get_rows() -> None:
    from aether.pipeline.scheduled import BUDGET, SKIPPED, SUMMARY_ROWS, UP_TO_DATE

    report = RunReport("r2", "fleet.yaml", "/d", "2026-01-01T00:00:00")
    n = SUMMARY_ROWS + 10
    report.steps = [Step(f"City {i:03d}", f"city-{i:03d}", 2024, "extract",
                         status=DONE if i % 5 else UP_TO_DATE, seconds=0.5, rows=10)
                    for i in range(n)]
    report.steps += [Step("City 007", "city-007", 2024, "train", status=FAILED, error="no POIs"),
                     Step("City 008", "city-008", 2024, "train", status=SKIPPED),
                     Step("City 009", "city-009", 2024, "train", status=BUDGET, error="budget")]
    console = Console(width=140, record=True)
    console.print(summary_table(report))
    text = console.export_text()
    lines = text.splitlines()
    extract = next(line for line in lines if line.startswith("│ extract"))
    cells = [c.strip() for c in extract.split("│")[1:-1]]
    header = [c.strip() for c in next(x for x in lines if "┃ step" in x).split("┃")[1:-1]]
    assert header == ["step", "done", "up to date", "failed", "skipped", "budget reached",
                      "rows", "seconds"]  # the statuses this run has, none other
    assert cells == ["extract", str(n - n // 5), str(n // 5), "0", "0", "0", str(10 * n),
                     f"{0.5 * n:.1f}"]
    train = [c.strip() for c in next(x for x in lines if x.startswith("│ train")).split("│")]
    assert train[1:-1] == ["train", "0", "0", "1", "1", "1", "0", "0.0"]
    assert f"{n + 3} steps" in text and "aether run status" in text
    assert "City 007" in text and "no POIs" in text and "City 009" in text
    assert "City 010" not in text and "City 041" not in text  # finished: counted, not listed
    # as many steps as the limit: a row each
    report.steps = report.steps[:SUMMARY_ROWS]
    console = Console(width=140, record=True)
    console.print(summary_table(report))
    text = console.export_text()
    assert all(f"City {i:03d}" in text for i in range(SUMMARY_ROWS))
