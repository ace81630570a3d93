"""The whole chain on the offline sample city: what ``aether demo`` runs.

extract → grids → train (paper and default presets) → encode → evaluate (land use, POI mix)
→ category queries (hit rate@k) → query maps. Every step skips work whose outputs are up to
date (extract and train check their inputs; encode/evaluate/maps are rewritten, cheaply), so
running it twice costs little the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aether.evaluation.probes import SEEDS
from aether.evaluation.tasks import TASKS_DIR, load_task
from aether.io.store import CityStore
from aether.ml.encode import ModelRun, encode_city, load_run

CITY = "Helsinki"
PRESETS = ("paper", "default")
CELLS_M = (50.0,)
TASKS = ("helsinki_landuse", "helsinki_poi_mix")
QUERIES = ("coffee shop", "late-night bars and live music", "hotel")
LABELS_FILE = "labels/osm_landuse.parquet"  # the task files name it relative to the city


@dataclass
class DemoResult:
    """Where each output of the demo is."""

    city_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, list[Any]] = field(default_factory=dict)  # rich tables to print


def category_queries() -> dict[str, list[str]]:
    """The packaged category queries (query text → categories that count as hits)."""
    import yaml

    text = resources.files("aether").joinpath("data/category_queries.yaml").read_text()
    return {str(k): [str(c) for c in v] for k, v in yaml.safe_load(text).items()}


def write_landuse_labels(pbf: Path, out: Path) -> Path:
    """OSM land-use polygons of the PBF as a GeoParquet label table (landuse, geometry)."""
    import pyrosm

    from aether.io.tables import write_parquet

    lu = pyrosm.OSM(str(pbf)).get_landuse()
    lu = lu[lu.geom_type.isin(["Polygon", "MultiPolygon"])]
    return write_parquet(lu[["landuse", "geometry"]].reset_index(drop=True), out)


def run_demo(data_dir: Path, *, epochs: int | None = None, seeds: int = len(SEEDS),
             say: Callable[[str], None] = print) -> DemoResult:
    """Run every step on the sample city; ``epochs`` and ``seeds`` shorten it (tests)."""
    from aether.execution.progress import bar
    from aether.ml.config import check_epochs

    check_epochs(epochs)

    with bar("demo stages", 2 + len(CELLS_M) + len(PRESETS) + len(TASKS)) as shown:
        begun: list[str] = []

        def stage(text: str) -> None:  # the stages before this one are done
            say(text)
            shown.update(completed=len(begun), note=text.split(":")[0])
            begun.append(text)

        return _run_stages(data_dir, epochs, seeds, stage)


def _run_stages(data_dir: Path, epochs: int | None, seeds: int,
                say: Callable[[str], None]) -> DemoResult:
    """The demo's steps; ``say`` announces each stage."""
    from rich.table import Table

    from aether.evaluation.evaluate import evaluate
    from aether.evaluation.report import rich_tables
    from aether.io.tables import write_json
    from aether.ml.train import train
    from aether.pipeline.extract import ExtractRequest, run_extract, run_grid
    from aether.query.maps import html_map, png_map
    from aether.query.search import hit_rates, load_index, search
    from aether.settings import DEFAULT_YEAR

    req = ExtractRequest(city=CITY, data_dir=data_dir, offline=True)
    say("extract: POIs and buffer means from the sample tiles")
    city_dir = run_extract(req).out_dir
    store = CityStore.at(city_dir)
    res = DemoResult(city_dir)
    for cell in CELLS_M:
        say(f"grid: {cell:g} m cells")
        res.outputs[f"grid {cell:g} m"] = run_grid(req, f"{cell:g}m").path
    runs: list[ModelRun] = []
    for preset in PRESETS:
        say(f"train: {preset} preset")
        path = train(city_dir, preset=preset, epochs=epochs)
        run = load_run(city_dir, path, slug=city_dir.parent.name, year=DEFAULT_YEAR)
        enc = encode_city(city_dir, run, list(CELLS_M))
        res.outputs[f"model {preset}"] = path
        res.outputs[f"AETHER vectors {preset}"] = enc.pois_path.parent
        runs.append(run)
    from aether.sample.city import ensure_sample

    labels = write_landuse_labels(ensure_sample(data_dir).pbf, store.dir / LABELS_FILE)
    res.outputs["land-use labels"] = labels
    for name in TASKS:
        task = load_task(TASKS_DIR / f"{name}.yaml")
        # a task on held-out POIs leaves out the runs that trained on all of them (paper)
        task_runs = [r for r in runs if not task.holdout or _holds_out(r)]
        say(f"evaluate: {name}" + ("" if len(task_runs) == len(runs) else
                                   " (runs with held-out POIs only: "
                                   f"{', '.join(r.name for r in task_runs)})"))
        table = evaluate(city_dir, task, task_runs, seeds=SEEDS[:seeds])
        res.outputs[f"evaluation {name}"] = Path(table["paths"]["markdown"])
        res.tables[name] = rich_tables(table)
    best = runs[-1]
    index = load_index(city_dir, best, CELLS_M[0])
    say("query: category hit rates and maps")
    hits = hit_rates(city_dir, best, index, category_queries(), k=10)
    hits_path = write_json(hits.to_dict(orient="records"),
                           store.evaluation(f"category_queries_{best.name}", "json"))
    res.outputs["category query hit rates"] = hits_path
    hits_table = Table(*map(str, hits.columns), title="category queries: hit rate@10")
    for row in hits.itertuples(index=False):
        hits_table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    res.tables["category queries"] = [hits_table]
    results = search(index, best, list(QUERIES), cache_path=store.text_embeddings)
    out = store.maps_dir
    res.outputs["query map (HTML)"] = html_map(index, results, out / "demo_queries.html")
    res.outputs["query map (PNG)"] = png_map(index, results, out / "demo_queries.png")
    return res


def _holds_out(run: ModelRun) -> bool:
    """Whether a run kept POIs out of training (``test_fraction`` above 0)."""
    v = run.config["hyperparameters"].get("test_fraction")
    return isinstance(v, (int, float)) and v > 0


def summary(res: DemoResult) -> dict[str, Any]:
    return {k: str(v) for k, v in res.outputs.items()}
