"""The offline sample city made ready for the training benchmarks (``pure_sample.py``,
``cityrep_sample.py``): extracted, gridded at the packaged tasks' 50 m, its land-use labels
written; and a run trained, loaded and encoded on that grid. One setup, so the pages' tables
are measured on the same city the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepared_sample(data: Path, radii: tuple[float, ...]) -> Path:
    """The sample's city folder in ``data`` with POI means at ``radii``, the 50 m grid and
    the land-use labels."""
    from aether.pipeline.demo import LABELS_FILE, write_landuse_labels
    from aether.pipeline.extract import ExtractRequest, run_extract, run_grid
    from aether.sample.city import ensure_sample

    req = ExtractRequest(city="Helsinki", data_dir=data, offline=True, radii=radii)
    city = run_extract(req).out_dir
    run_grid(req, "50m")  # the packaged tasks are on 50 m cells
    write_landuse_labels(ensure_sample(data).pbf, city / LABELS_FILE)
    return city


def trained(city: Path, preset: str, **train_options: Any) -> Any:
    """A run of ``preset`` trained on ``city``, loaded, and encoded on its 50 m grid."""
    from aether.ml.encode import encode_city, load_run
    from aether.ml.train import train

    path = train(city, preset=preset, **train_options)
    run = load_run(city, path, slug="helsinki", year=2024)
    encode_city(city, run, [50.0])
    return run
