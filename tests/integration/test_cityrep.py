"""`aether evaluate --protocol cityrep` on the sample city: 10 x 10 blocks, an MLP probe of
1,024 units, AETHER against raw AlphaEarth with a paired test, and the synthetic label."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from aether.evaluation.evaluate import PRIOR, RAW, SYNTHETIC_NOTE, evaluate
from aether.evaluation.tasks import TASKS_DIR, load_task


def test_cityrep_protocol_on_the_sample(sample_runs, cli):
    from aether.ml.encode import load_run
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.sample.city import ensure_sample

    city_dir, names, data_root = sample_runs
    write_landuse_labels(ensure_sample(data_root).pbf, city_dir / LABELS_FILE)
    runs = [load_run(city_dir, n, slug="helsinki", year=2024) for n in names]
    task = load_task(TASKS_DIR / "helsinki_landuse.yaml")
    res = evaluate(city_dir, task, runs, protocol="cityrep", seeds=(42, 24, 7))
    assert res["protocol"] == "cityrep" and res["probe_hidden"] == 1024
    assert res["note"] == SYNTHETIC_NOTE
    rows = {(r["method"], r["probe"], r["split"]) for r in res["rows"]}
    assert rows == {(PRIOR, "-", "blocks10x10"), (RAW, "mlp", "blocks10x10"),
                    *{(f"AETHER ({p})", "mlp", "blocks10x10") for p in ("paper", "default")}}
    for r in res["rows"]:
        assert len(r["metrics"]["macro_f1"]["values"]) == 3
        if r["method"].startswith("AETHER"):
            p = r["paired_vs_raw"]["macro_f1"]["p"]
            assert p is None or 0 <= p <= 1
    md = (city_dir / "evaluation" / "helsinki_landuse_cityrep.md").read_text()
    assert SYNTHETIC_NOTE in md and "p (paired t vs raw)" in md
    # the CLI names the protocol; the same inputs reuse the written result
    r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--protocol",
            "cityrep", "--seeds", "3", *[a for n in names for a in ("--model", n)],
            "--data-dir", str(data_root))
    assert r.returncode == 0, r.stderr
    assert SYNTHETIC_NOTE in r.stdout and "cityrep protocol" in r.stdout
    r = cli("evaluate", "--city", "Helsinki", "--task", "helsinki_landuse", "--protocol",
            "nope", "--data-dir", str(data_root))
    assert r.returncode == 2 and "unknown protocol" in r.stderr
