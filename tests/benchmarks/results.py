"""Where benchmarks put their figures: one JSON file each, which ``render_docs.py`` turns into
docs/benchmarks.md (the page is never typed by hand)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path


def measured_at() -> dict[str, object]:
    """When and on what the figures were taken (the load average goes with every figure)."""
    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_at_end": round(os.getloadavg()[0], 1)}


def write_results(path: str | os.PathLike[str], payload: dict[str, object]) -> Path:
    """Write ``payload`` as JSON atomically (temp file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    tmp.replace(out)
    print(f"results written to {out}")
    return out
