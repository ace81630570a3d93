"""What made an output: software, data and time, recorded beside every trained run and every
evaluation so that a table can be traced to the code and tiles behind it."""

from __future__ import annotations

import datetime as dt
import functools
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aether._version import VERSION


def now() -> str:
    """UTC time, to the second, ISO 8601."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


@functools.cache
def git_commit() -> str | None:
    """The commit of the aether source tree in use, when it is a git checkout (else None);
    ``+dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no", "--", "aether"], check=True,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def software() -> dict[str, Any]:
    """aether's version and commit, and the versions of what computes the numbers."""
    return {"aether": VERSION, "git_commit": git_commit(),
            "python": platform.python_version(), "torch": _version("torch"),
            "numpy": _version("numpy"), "scikit-learn": _version("scikit-learn")}


def dataset(city_dir: Path) -> dict[str, Any]:
    """The city's data version, from its extract manifest: the extract's id, source, POIs,
    tiles and the tiles index's checksum (None where an older manifest lacks it)."""
    from aether.io.store import CityStore
    from aether.io.tables import read_json

    try:
        m = read_json(CityStore.at(city_dir).manifest)
    except (OSError, ValueError):
        return {"extract": None}
    inputs = m.get("inputs") or {}
    made_from = (m.get("config") or {}).get("dataset") or {}
    return {"extract": m.get("run_id"), "source": inputs.get("source"),
            # set by the tiles themselves when the raster is generated (``aef.SYNTHETIC_TAG``)
            "synthetic": made_from.get("synthetic"),
            "pois": inputs.get("pois"), "pois_snapshot": inputs.get("pois_snapshot"),
            "tiles": inputs.get("tiles"),
            "tiles_index_sha256": inputs.get("tiles_index_sha256"),
            "outputs_sha256": {k: v.get("sha256") for k, v in (m.get("outputs") or {}).items()}}


def is_synthetic(city_dir: Path) -> bool:
    """Whether the city's tables come from a generated raster, as its tiles say: such
    figures test the machinery, not the method."""
    return bool(dataset(city_dir).get("synthetic"))


def run_is_synthetic(config: dict[str, Any]) -> bool:
    """Whether a trained run learnt from a generated raster, as its config's provenance says
    (one city's dataset, or one per city for a run of several)."""
    made_from = (config.get("provenance") or {}).get("dataset") or {}
    parts = [made_from] if "extract" in made_from else list(made_from.values())
    return any(isinstance(d, dict) and bool(d.get("synthetic")) for d in parts)


def record(city_dir: Path, *, seeds: list[int], started: str) -> dict[str, Any]:
    """The provenance block of an output begun at ``started`` and finished now."""
    return {**software(), "dataset": dataset(city_dir), "seeds": seeds,
            "started": started, "finished": now()}
