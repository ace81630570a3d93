"""Step records: what a step was made from and the checksums of what it wrote, in
``<city>/<year>/.aether-steps/<step>.json``. A step whose record holds the same inputs and
whose outputs are unchanged since is up to date, and is not done again (``aether run``'s
train and encode, ``aether grid``)."""

from __future__ import annotations

from pathlib import Path

from aether.io.store import CityStore


def step_fresh(city_dir: Path, step: str, inputs: str) -> bool:
    """True when the step ran on these inputs and its outputs are unchanged since."""
    from aether.io.tables import read_json, sha256_file

    path = CityStore.at(city_dir).step(step)
    try:
        rec = read_json(path)
    except (OSError, ValueError):
        return False
    return rec.get("inputs") == inputs and all(
        (city_dir / f).is_file() and sha256_file(city_dir / f) == h
        for f, h in rec.get("outputs", {}).items())


def step_record(city_dir: Path, step: str, inputs: str, outputs: list[Path]) -> str:
    """Write the step record; returns a hash of the outputs (the next step's input)."""
    from aether.io.tables import config_hash, sha256_file, write_json

    files = {str(p.relative_to(city_dir)): sha256_file(p) for p in sorted(outputs)}
    write_json({"inputs": inputs, "outputs": files}, CityStore.at(city_dir).step(step))
    return config_hash(files)
