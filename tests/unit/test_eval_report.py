"""The evaluation report as text: title, caption, rows, Markdown and terminal tables, from a
small result dict written here (the numbers are chosen so their rounding is known)."""

from __future__ import annotations

from aether.evaluation import report
from aether.evaluation.report import RAW


def _row(method, probe, split, f1, acc, rel=None, p=None, p_holm=None):
    row = {"method": method, "probe": probe, "split": split,
           "metrics": {"macro_f1": {"mean": f1[0], "std": f1[1], "sd": f1[2]},
                       "accuracy": {"mean": acc[0], "std": acc[1], "sd": acc[2]}},
           "relative_to_raw": {} if rel is None else {"macro_f1": rel, "accuracy": 0.5}}
    if p is not None:
        row["paired_vs_raw"] = {"macro_f1": {"p": p, "p_holm": p_holm}}
    return row


def _result(**over):
    result = {
        "task": "landuse", "kind": "classification", "n_units": 120, "unit": "grid",
        "shuffled_labels": False, "seeds": [42, 24], "metrics": ["macro_f1", "accuracy"],
        "rows": [
            _row(RAW, "mlp", "random", (0.5, 0.01, 0.02), (0.6, 0.03, 0.04), rel=0.0),
            _row("AETHER (a)", "mlp", "random", (0.55, 0.011, 0.0125), (0.7, 0.05, 0.06),
                 rel=0.1, p=0.01234, p_holm=0.04567),
            _row("prior (no features)", "-", "random", (0.2, 0.0, 0.0), (0.3, 0.0, 0.0)),
            _row(RAW, "mlp", "spatial", (0.4, 0.02, 0.03), (0.5, 0.01, 0.02), rel=0.0),
            _row("AETHER (a)", "mlp", "spatial", (0.3, 0.1, 0.2), (0.45, 0.2, 0.3),
                 rel=-0.25, p=0.5, p_holm=1.0),
        ],
    }
    return {**result, **over}


def test_title_names_task_kind_units_seeds_and_protocol():
    assert report.title(_result()) == "landuse (classification, 120 grid units; 2 seeds)"
    assert report.title(_result(seeds=[7], shuffled_labels=True, protocol="cityrep", unit="poi",
                                n_units=9)) == (
        "landuse (classification, 9 poi units, SHUFFLED LABELS; 1 seed; cityrep protocol)")
    assert report.title(_result(protocol="default")) == report.title(_result())


def test_caption_says_the_spread_the_sign_and_the_tests():
    tail = ("Δmacro_f1 vs raw: relative change of the mean macro_f1 against raw AlphaEarth "
            "with the same probe and split; + is better, − is worse. p: paired t-test of "
            "macro_f1 against raw AlphaEarth over the same seeds; p Holm: the same, "
            "Holm-corrected over the rows of the table that have a p.")
    assert report.caption(_result()) == "mean ± std over 2 seeds. " + tail
    assert report.caption(_result(seeds=[1])) == "mean over 1 seed (no spread). " + tail
    assert report.caption(_result(spread="sd", seeds=[1, 2, 3])).startswith(
        "mean ± sd over 3 seeds. Δmacro_f1")


def test_caption_of_lower_is_better_metrics_and_replicates():
    got = report.caption(_result(kind="distribution", metrics=["kl", "l1"],
                                 replicates={"A ×3": ["a", "b", "c"], "B ×2": ["d", "e"]}))
    assert got.startswith(
        "mean ± std over 2 seeds; rows marked ×2/3 train seeds: over training seeds × probe "
        "seeds, and their p over the training seeds (each seed's mean against raw's mean "
        "over the same probe seeds). Δkl vs raw:")
    assert ("+ is better, − is worse (kl, l1: lower is better, so a lower value gives a "
            "positive Δ). p: paired t-test of kl") in got
    # the result's own directions win over the kind's defaults
    own = report.caption(_result(higher_is_better={"macro_f1": True, "mae": False}))
    assert "(mae: lower is better" in own
    assert "lower is better" not in report.caption(_result())


def test_cells_of_one_split():
    header = report._header(_result())
    assert header == ["method", "probe", "macro_f1", "accuracy", "Δmacro_f1 vs raw",
                      "p (paired t vs raw)", "p Holm"]
    assert report._cells(_result(), "random") == [
        [RAW, "mlp", "0.500 ± 0.010", "0.600 ± 0.030", "", "", ""],
        ["AETHER (a)", "mlp", "0.550 ± 0.011", "0.700 ± 0.050", "+10.0%", "0.0123", "0.0457"],
        ["prior (no features)", "-", "0.200 ± 0.000", "0.300 ± 0.000", "", "", ""],
    ]
    assert report._cells(_result(spread="sd"), "spatial")[1] == [
        "AETHER (a)", "mlp", "0.300 ± 0.200", "0.450 ± 0.300", "-25.0%", "0.5", "1"]
    # one seed: no spread
    assert report._cells(_result(seeds=[3]), "spatial")[0] == [RAW, "mlp", "0.400", "0.500",
                                                              "", "", ""]


def test_markdown_table():
    assert report.markdown_table(["a", "b"], [[1.23456, "x"], [2, 0.5]]) == (
        "| a | b |\n|---|---|\n| 1.235 | x |\n| 2 | 0.500 |")


PROV = {"aether": "1.2.3", "git_commit": "abc123", "python": "3.11.4", "torch": "2.1",
        "numpy": "1.26", "dataset": {"extract": "extract.json",
                                     "tiles_index_sha256": "0123456789abcdef0123"},
        "seeds": [42, 24], "started": "t0", "finished": "t1"}


def test_provenance_line():
    assert report.provenance_line(PROV) == (
        "aether 1.2.3 (abc123), Python 3.11.4, torch 2.1, numpy 1.26; data: extract.json, "
        "tiles index 0123456789ab; probe seeds 42, 24; t0 → t1")
    bare = {**PROV, "git_commit": None, "dataset": None}
    assert report.provenance_line(bare) == (
        "aether 1.2.3 (no git commit), Python 3.11.4, torch 2.1, numpy 1.26; data: no "
        "extract manifest, tiles index unknown; probe seeds 42, 24; t0 → t1")


def test_markdown_has_title_note_caption_a_table_per_split_and_provenance():
    res = _result(note="synthetic", provenance=PROV)
    want = "\n".join([
        f"### {report.title(res)}", "", "*synthetic*", "", f"*{report.caption(res)}*", "",
        "**random split**", "",
        report.markdown_table(report._header(res), report._cells(res, "random")), "",
        "**spatial split**", "",
        report.markdown_table(report._header(res), report._cells(res, "spatial")), "",
        f"<sub>{report.provenance_line(PROV)}</sub>", ""])
    assert report.markdown(res) == want
    plain = report.markdown(_result())
    assert plain.startswith(f"### {report.title(_result())}\n\n*mean ± std")
    assert "<sub>" not in plain and plain.endswith("| 1 |\n")
    assert plain.index("**random split**") < plain.index("**spatial split**")


def test_rich_tables_one_per_split_with_the_caption():
    tables = report.rich_tables(_result(note="synthetic"))
    assert [t.title for t in tables] == [f"{report.title(_result())} — random split",
                                         f"{report.title(_result())} — spatial split"]
    assert tables[0].caption == "synthetic. " + report.caption(_result())
    assert tables[0].caption_justify == "left"
    assert [c.header for c in tables[0].columns] == report._header(_result())
    assert tables[0].row_count == 3 and tables[1].row_count == 2
    assert list(tables[0].columns[4].cells) == ["", "+10.0%", ""]
    assert report.rich_tables(_result())[1].caption == report.caption(_result())
