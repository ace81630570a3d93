"""docs/emulator.md's fault demo does what the page says: its schedule's faults are all sent
to the client, and the extraction still ends with the table a fault-free source gives."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aether.core.aef import BANDS

DOC = Path(__file__).resolve().parents[2] / "docs" / "emulator.md"


def _doc_commands() -> tuple[dict[int, str], list[str]]:
    text = DOC.read_text()
    serve = re.search(r"^aether emulator serve .*--fault-schedule (\S+).*$", text, re.M)
    extract = re.search(r"^aether extract .*--ee-url http://127\.0\.0\.1:\d+ .*$", text, re.M)
    assert serve and extract, "the fault demo left docs/emulator.md"
    schedule = {int(n): kind for n, kind in
                (item.split(":") for item in serve.group(1).split(","))}
    return schedule, shlex.split(extract.group(0))[1:]


@pytest.mark.slow
def test_the_documented_fault_sequence_is_triggered(emulator, ee_server, sample_extract,
                                                    tmp_path, cli) -> None:
    from aether.testing.emulator import Faults

    schedule, args = _doc_commands()
    emulator.faults = Faults(schedule=schedule)
    args = [ee_server if a.startswith("http://127.0.0.1:") else a for a in args]
    data = args[args.index("--data-dir") + 1]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    injected = [e["fault"] for e in emulator.log if e["fault"]]
    # "memory" is an alias of the kind the log names; every scheduled fault was sent once
    assert len(injected) == len(schedule), (injected, schedule)
    out = pd.read_parquet(tmp_path / data / "helsinki" / "2024" / "poi_embeddings.parquet")
    ref = pd.read_parquet(sample_extract / "poi_embeddings.parquet")
    assert len(out) == len(ref)
    diff = np.abs(out[list(BANDS)].to_numpy() - ref[list(BANDS)].to_numpy())
    assert np.nanmax(diff) <= 1e-3  # EE's polygon vs the exact circle (see test_source_ee)
