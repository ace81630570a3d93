"""aether demo: the whole chain on the sample city, printed outputs that exist, idempotent."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_the_chain_and_reruns_cheaply(tmp_path, cli) -> None:
    """On a fresh data directory, as a new user runs it (short training, one seed)."""
    args = ("demo", "--epochs", "2", "--seeds", "1", "--data-dir", str(tmp_path / "data"))
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    outputs = dict(re.findall(r"^  (.+?)\s{2,}(/\S+)$", r.stdout, flags=re.M))
    for name in ("model paper", "model default", "evaluation helsinki_landuse",
                 "evaluation helsinki_poi_mix", "category query hit rates", "query map (HTML)",
                 "query map (PNG)", "land-use labels"):
        assert name in outputs, name
        assert Path(outputs[name]).exists(), outputs[name]
    assert re.search(r"AETHER \(paper\)\s*│\s*linear", r.stdout)
    assert re.search(r"AlphaEarth \(raw\)\s*│\s*mlp", r.stdout)
    assert "| AETHER" not in r.stdout and "±" not in r.stdout  # rich tables; one seed
    assert "coffee shop" in r.stdout and "cell_hit@10" in r.stdout
    html = Path(outputs["query map (HTML)"]).read_text()
    assert "late-night bars and live music" in html
    evaluation = Path(outputs["evaluation helsinki_landuse"])
    stamp = evaluation.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    # nothing to re-train or re-evaluate: same table, file untouched
    assert evaluation.stat().st_mtime_ns == stamp
    tables = r.stdout.split("Outputs:")[0]
    assert again.stdout.split("Outputs:")[0] == tables
    assert time.perf_counter() - t0 < 120
