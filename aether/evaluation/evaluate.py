"""Downstream evaluation: frozen embeddings of the same units, probed side by side.

Every method sees the same units and splits: raw AlphaEarth (the buffer mean at the models'
base radius, i.e. exactly the head's input), each trained AETHER run, POI text only (mean
sentence embedding of the POIs in the unit), and raw AlphaEarth ⊕ POI text. A feature-free
prior row shows what chance scores, and ``shuffle`` trains every probe on permuted labels,
so a harness that flatters would show it. Results go to ``<city>/evaluation/<task>.{json,md}``.

A protocol names the splits, probes and methods. ``default``: random and 250 m spatial-block
splits, linear and 64-unit MLP probes, every method. ``cityrep``: the CityRep benchmark's
protocol as its code runs it (``aether.evaluation.cityrep``), AETHER against raw AlphaEarth.
``spatial-blocks``: aether's earlier approximation of it (10 × 10 blocks until a fifth of the
units, a random validation tenth, z-scored inputs, MLP-1,024 in batches of 128), kept so that
older tables can be reproduced. Every row carries a paired t-test against raw AlphaEarth over
the same seeds and folds, so a gain within the seed noise is shown as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aether import provenance
from aether.core.aef import BANDS, utm_epsg
from aether.errors import ModelError, TableError
from aether.evaluation import cityrep, probes
from aether.evaluation.report import RAW, markdown
from aether.evaluation.tasks import ProbeTask, assign, read_labels
from aether.execution.progress import Bar, bar
from aether.io.store import CityStore
from aether.io.tables import (
    atomic_path,
    config_hash,
    read_json,
    read_table,
    sha256_file,
    write_json,
)
from aether.ml.encode import ModelRun, apply_ae, base_poi_means, grid_window_means, read_grid
from aether.ml.text import encode_texts

TEXT = "POI text only"
CONCAT = "AlphaEarth ⊕ POI text"
PRIOR = "prior (no features)"
SPLITS = ("random", "spatial")
DEFAULT_RADIUS_M = 100.0
SYNTHETIC_NOTE = "synthetic AlphaEarth raster: tests the machinery, not the method"


@dataclass(frozen=True)
class Protocol:
    """How methods are compared: splits, probes, probe settings, and which methods."""

    name: str
    splits: tuple[str, ...]
    probe_kinds: tuple[str, ...]
    settings: probes.ProbeSettings
    text_methods: bool = True  # POI text and raw ⊕ text beside raw and AETHER
    spread: str = "std"  # population (std) or sample (sd) spread over seeds


CITYREP_SPLIT = "cityrep-blocks"


PROTOCOLS: dict[str, Protocol] = {
    "default": Protocol("default", SPLITS, probes.PROBES, probes.ProbeSettings()),
    "cityrep": Protocol("cityrep", (CITYREP_SPLIT,), ("mlp",),
                        probes.ProbeSettings(hidden=cityrep.ProbeSettings().hidden,
                                             batch=cityrep.ProbeSettings().batch,
                                             max_epochs=cityrep.ProbeSettings().epochs),
                        text_methods=False),
    "spatial-blocks": Protocol("spatial-blocks", ("blocks10x10",), ("mlp",),
                               probes.ProbeSettings(hidden=1024), text_methods=False,
                               spread="sd"),
}


@dataclass
class Units:
    """The spatial units of a task: centres in a UTM crs, polygons or points in EPSG:4326."""

    frame: Any  # GeoDataFrame with x, y
    crs: str
    raw: np.ndarray  # (N, 64) AlphaEarth means at the base radius


def aether_label(run: ModelRun, city: str) -> str:
    """A row per run: two runs of one preset are two rows (``AETHER (name, preset)``); a
    run of other cities says so (``transfer from a+b``): held-out-city transfer."""
    name = run.name if run.name == run.preset else f"{run.name}, {run.preset}"
    if city not in run.cities:
        name += f"; transfer from {'+'.join(run.cities)}"
    return f"AETHER ({name})"


def _units(task: ProbeTask, city_dir: Path, radius: float, pois: Any) -> Units:
    """Grid cells (window means) or POIs (their buffer means), with their raw features."""
    if task.unit == "grid":
        grid = read_grid(city_dir, task.grid_cell).reset_index(drop=True)
        c = grid.geometry.union_all().centroid
        return Units(grid, f"EPSG:{utm_epsg(c.x, c.y)}",
                     grid_window_means(grid, radius, task.grid_cell).mean)
    emb = base_poi_means(city_dir, radius).set_index("poi_id")
    frame = pois[pois["poi_id"].isin(emb.index)].reset_index(drop=True)
    c = frame.geometry.union_all().centroid
    crs = f"EPSG:{utm_epsg(c.x, c.y)}"
    xy = frame.geometry.to_crs(crs)
    frame = frame.assign(x=xy.x.to_numpy(), y=xy.y.to_numpy())
    return Units(frame, crs, emb.loc[frame["poi_id"], list(BANDS)].to_numpy(np.float32))


def heldout_pois(pois: Any, run: ModelRun, city: str) -> np.ndarray:
    """Mask of the POIs the trainer held out from every preset (its fixed test split);
    every POI of a city the run never trained on."""
    from aether.ml.config import TrainConfig
    from aether.ml.data import split_of

    if city not in run.cities:
        return np.ones(len(pois), bool)
    hyper = run.config["hyperparameters"]
    if "unknown" in hyper.values():
        raise ModelError(f"run {run.name} does not record how it held out POIs (an imported "
                         "checkpoint)", "use a task without holdout, or a run of `aether train`")
    cfg = TrainConfig(**hyper)
    xy = pois.geometry.to_crs(pois.geometry.estimate_utm_crs())
    return split_of(pois["poi_id"].to_numpy(object), np.column_stack([xy.x, xy.y]),
                    cfg) == "test"


def _text_features(task: ProbeTask, units: Units, pois: Any, use: np.ndarray,
                   city_dir: Path, text_model: str | None) -> np.ndarray:
    """Mean text embedding of the (feature) POIs in each unit; zeros where there are none."""
    import geopandas as gpd

    vec = encode_texts(pois["text"].astype(str).tolist(),
                       cache_path=CityStore.at(city_dir).text_embeddings, model_name=text_model)
    if task.unit == "poi":
        pos = pd.Index(pois["poi_id"]).get_indexer(units.frame["poi_id"])
        return vec[pos]
    frame = units.frame
    zones = gpd.GeoDataFrame({"u": np.arange(len(frame))},
                             geometry=frame.geometry.to_crs(units.crs).values, crs=units.crs)
    if task.radius_m > 0:
        zones = zones.assign(geometry=gpd.points_from_xy(frame["x"], frame["y"]).buffer(
            task.radius_m))
    pts = gpd.GeoDataFrame({"p": np.flatnonzero(use)},
                           geometry=pois.geometry[use].to_crs(units.crs).values, crs=units.crs)
    hit = gpd.sjoin(pts, zones, predicate="within")
    out = np.zeros((len(frame), vec.shape[1]), np.float32)
    counts = np.bincount(hit["u"], minlength=len(frame))
    np.add.at(out, hit["u"].to_numpy(), vec[hit["p"].to_numpy()])
    return out / np.maximum(counts, 1)[:, None]


def features(task: ProbeTask, city_dir: Path, runs: list[ModelRun], text_methods: bool = True
             ) -> tuple[dict[str, np.ndarray], UnitPlaces]:
    """Feature matrices of every method and the labels, on the units every method covers."""
    radii = {run.base_radius_m for run in runs}
    if len(radii) > 1:
        raise ModelError(f"models trained at different base radii {sorted(radii)}",
                         "compare runs trained at one base radius")
    radius = radii.pop() if radii else DEFAULT_RADIUS_M
    pois = read_table(CityStore.at(city_dir).pois, ["poi_id", "text", "geometry"], "pois")
    units = _units(task, city_dir, radius, pois)
    held = np.zeros(len(pois), bool)
    if task.holdout and runs:
        held = ~held
        for run in runs:  # held out from every model: none has seen their texts
            mine = heldout_pois(pois, run, city_dir.parent.name)
            if not mine.any():
                raise TableError(
                    f"task {task.name} needs held-out POIs, but run {run.name} trained on all "
                    "of them (test_fraction 0, as the paper preset does)",
                    "leave that run out of this task, or train it with --set test_fraction=0.1")
            held &= mine
    if task.holdout and not held.any():
        raise TableError(f"task {task.name} needs held-out POIs but the models hold none",
                         "train with a test_fraction above 0")
    labels_table = read_labels(task, city_dir)
    if task.holdout:
        labels_table = labels_table[labels_table["poi_id"].isin(pois.loc[held, "poi_id"])]
    labels = assign(task, units.frame, labels_table, units.crs)
    feats: dict[str, np.ndarray] = {RAW: units.raw}
    for run in runs:
        feats[aether_label(run, city_dir.parent.name)] = apply_ae(run, units.raw)
    if text_methods:
        text_model = runs[0].text_model if runs else None
        text = _text_features(task, units, pois, ~held, city_dir, text_model)
        feats[TEXT] = text
        feats[CONCAT] = np.concatenate([units.raw, text], axis=1)
    ok = np.isfinite(units.raw[labels.index]).all(1)
    sel = labels.index[ok]
    frame = units.frame.iloc[sel]
    out = {k: v[sel].astype(np.float32) for k, v in feats.items()}
    labels.index, labels.y = sel, labels.y[ok]
    return out, UnitPlaces(labels, frame["x"].to_numpy(float), frame["y"].to_numpy(float),
                           units.crs)


@dataclass
class UnitPlaces:
    """The labelled units' targets and centres (x, y in ``crs``; lon/lat on demand)."""

    labels: Any
    x: np.ndarray
    y: np.ndarray
    crs: str

    def lonlat(self) -> tuple[np.ndarray, np.ndarray]:
        from pyproj import Transformer

        lon, lat = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True).transform(
            self.x, self.y)
        return np.asarray(lon, float), np.asarray(lat, float)


def _split(kind: str, x: np.ndarray, y: np.ndarray, seed: int, block_m: float) -> np.ndarray:
    if kind == "random":
        return probes.random_split(len(x), seed)
    if kind == "blocks10x10":
        return probes.grid_block_split(x, y, 10, seed)
    return probes.block_split(x, y, block_m, seed)


def evaluate(
    city_dir: Path,
    task: ProbeTask,
    runs: list[ModelRun],
    *,
    protocol: str = "default",
    seeds: tuple[int, ...] = probes.SEEDS,
    probe_kinds: tuple[str, ...] | None = None,
    splits: tuple[str, ...] | None = None,
    shuffle: bool = False,
    settings: probes.ProbeSettings | None = None,
    write: bool = True,
    replicates: list[list[ModelRun]] | None = None,
) -> dict[str, Any]:
    """Probe every method on every split and seed; the result table as a JSON-able dict.

    ``protocol`` (see PROTOCOLS) gives the splits, probes and settings not passed. A result
    whose inputs (task, the set of models and of seeds, tables, settings) were seen before
    is reused from ``evaluation/.cache/`` whatever order the models and seeds came in, so
    re-running a pipeline costs nothing here. Each result is written twice: as the task's
    latest (``<task>[_<protocol>].{json,md}``) and kept per set of runs
    (``<task>[_<protocol>]__<run>+<run>.{json,md}``), with its provenance. ``replicates``
    (groups of runs of one config with different training seeds, ``runs`` ignored) makes
    one row of each group over its training seeds × probe seeds.
    """
    started = provenance.now()
    if protocol not in PROTOCOLS:
        from aether.errors import ConfigError

        raise ConfigError(f"unknown protocol {protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[protocol]
    if protocol == "cityrep" and (probe_kinds or splits or settings):
        from aether.errors import ConfigError

        raise ConfigError("the cityrep protocol fixes its splits, probe and probe settings",
                          "leave them out, or use the default or spatial-blocks protocol")
    if replicates:
        runs = [r for group in replicates for r in group]
    probe_kinds = probe_kinds or proto.probe_kinds
    splits = splits or proto.splits
    settings = settings or proto.settings
    runs = sorted(runs, key=lambda r: r.name)  # one result per set of models
    store = CityStore.at(city_dir)
    stem = (f"{task.name}{'' if protocol == 'default' else '_' + protocol}"
            f"{'_shuffled' if shuffle else ''}")
    groups = [[r.name for r in g] for g in replicates or []]
    key = _inputs_key(task, city_dir, runs, sorted(seeds), probe_kinds, splits, shuffle,
                      settings, *([groups] if groups else []))
    cached = store.evaluation_cache(stem, key)
    if write and cached.is_file():
        result = read_json(cached)
        return {**result, "paths": _publish_both(store, stem, runs, result)}
    feats, places = features(task, city_dir, runs, proto.text_methods)
    labels, cfg = places.labels, settings
    scores: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with bar(f"evaluate {task.name}: split × seed × method × probe",
             len(splits) * len(seeds) * len(feats) * len(probe_kinds)) as shown:
        if protocol == "cityrep":
            per_method = cityrep.probe_methods(task.kind, feats, labels.y, *places.lonlat(),
                                               seeds, shuffle, PRIOR, shown.advance)
            scores = {(m, "-" if m == PRIOR else "mlp", CITYREP_SPLIT): v
                      for m, v in per_method.items()}
        else:
            _probe_all(task, feats, labels, places.x, places.y, splits, seeds, probe_kinds,
                       shuffle, cfg, scores, shown)
    if replicates:
        scores = _pool(scores, replicates, city_dir.parent.name)
    metrics = (cityrep.METRICS if protocol == "cityrep" else probes.METRICS)[task.kind]
    result = {**_table(task, scores, labels, seeds, shuffle, metrics), "inputs_key": key,
              "protocol": protocol, "probe_hidden": cfg.hidden, "spread": proto.spread,
              "runs": [{"row": aether_label(r, city_dir.parent.name), "run": r.name,
                        "preset": r.preset, "trained_on": r.cities,
                        "config_hash": r.config.get("config_hash"),
                        "train_seed": r.config.get("hyperparameters", {}).get("seed")}
                       for r in runs],
              "replicates": {replicate_label(g, city_dir.parent.name): [r.name for r in g]
                             for g in replicates or []},
              "note": SYNTHETIC_NOTE if provenance.is_synthetic(city_dir) else None,
              "provenance": provenance.record(city_dir, seeds=list(seeds), started=started)}
    if write:
        write_json(result, cached)
        result["paths"] = _publish_both(store, stem, runs, result)
    return result


def replicate_label(group: list[ModelRun], city: str) -> str:
    """The row of a group of training-seed replicates."""
    return f"{aether_label(group[0], city)} ×{len(group)} train seeds"


def _pool(scores: dict[tuple[str, str, str], list[dict[str, float]]],
          groups: list[list[ModelRun]], city: str
          ) -> dict[tuple[str, str, str], list[dict[str, float]]]:
    """One row per group: its runs' per-seed scores one after another (run-major, so raw
    AlphaEarth's seeds repeated once per run pair with them)."""
    members = {aether_label(r, city): g for g in groups for r in g}
    out: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for (method, probe, split), values in scores.items():
        group = members.get(method)
        if group is None:
            out[(method, probe, split)] = values
        else:
            out.setdefault((replicate_label(group, city), probe, split), []).extend(values)
    return out


def run_set(runs: list[ModelRun]) -> str:
    """A file-name part for a set of runs (names are slugs): ``a+b``, hashed when long."""
    names = "+".join(sorted(r.name for r in runs)) or "no-models"
    return (names if len(names) <= 80
            else f"{names[:60]}+{config_hash({'runs': names})[:12]}")


def _publish_both(store: CityStore, stem: str, runs: list[ModelRun], result: dict[str, Any]
                  ) -> dict[str, str]:
    """The task's latest result, and the one kept for this set of runs."""
    kept = _publish(store, f"{stem}__{run_set(runs)}", result)
    return {**_publish(store, stem, result), "runs_json": kept["json"],
            "runs_markdown": kept["markdown"]}


def _probe_all(task: ProbeTask, feats: dict[str, np.ndarray], labels: Any, ux: np.ndarray,
               uy: np.ndarray, splits: tuple[str, ...], seeds: tuple[int, ...],
               probe_kinds: tuple[str, ...], shuffle: bool, cfg: probes.ProbeSettings,
               scores: dict[tuple[str, str, str], list[dict[str, float]]], shown: Bar) -> None:
    """Fill ``scores`` with every split × seed × method × probe, one bar step each."""
    for split in splits:
        for seed in seeds:
            test = _split(split, ux, uy, seed, task.block_m)
            y_tr, y_te = labels.y[~test], labels.y[test]
            if shuffle:
                y_tr = y_tr[np.random.default_rng(seed + 1).permutation(len(y_tr))]
            pred = probes.prior_predict(task.kind, y_tr, int(test.sum()))
            scores.setdefault((PRIOR, "-", split), []).append(
                probes.score(task.kind, y_te, pred))
            for name, x in feats.items():
                for probe in probe_kinds:
                    pred = probes.fit_predict(task.kind, probe, x[~test], y_tr, x[test], seed,
                                              cfg, n_classes=len(labels.classes) or None)
                    scores.setdefault((name, probe, split), []).append(
                        probes.score(task.kind, y_te, pred))
                    shown.advance()


def _publish(store: CityStore, stem: str, result: dict[str, Any]) -> dict[str, str]:
    """Write the result as ``evaluation/<task>.{json,md}`` (the latest one asked for); files
    that already hold it are left untouched."""
    paths = {"json": str(store.evaluation(stem, "json")),
             "markdown": str(store.evaluation(stem, "md"))}
    try:
        if (read_json(paths["json"]).get("inputs_key") == result["inputs_key"]
                and Path(paths["markdown"]).is_file()):
            return paths
    except (OSError, ValueError, AttributeError):
        pass
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown(result))
    write_json(result, paths["json"])
    return paths


def _inputs_key(task: ProbeTask, city_dir: Path, runs: list[ModelRun], *settings: Any) -> str:
    """What a result depends on: the task, the set of models, the tables it reads, the
    settings (models in any order give the same key)."""
    from dataclasses import asdict

    from aether.evaluation.tasks import label_path
    from aether.io.store import MODEL_WEIGHTS

    store = CityStore.at(city_dir)
    tables = [store.pois, label_path(task, city_dir)]
    tables.append(store.grid(task.grid_cell) if task.unit == "grid" else store.poi_embeddings)
    spec = {k: v for k, v in asdict(task).items() if k != "source"}
    models = sorted((str(r.config.get("config_hash", r.name)),
                     sha256_file(r.path / MODEL_WEIGHTS) if (r.path / MODEL_WEIGHTS).is_file()
                     else "") for r in runs)
    return config_hash({"task": spec, "models": models,
                        "tables": [sha256_file(p) for p in tables if p.is_file()],
                        "settings": [asdict(x) if hasattr(x, "__dataclass_fields__") else x
                                     for x in settings]})


def _table(task: ProbeTask, scores: dict[tuple[str, str, str], list[dict[str, float]]],
           labels: Any, seeds: tuple[int, ...], shuffle: bool, metrics: dict[str, bool]
           ) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for (method, probe, split), runs in scores.items():
        stats = {m: {"mean": float(np.mean([r[m] for r in runs])),
                     "std": float(np.std([r[m] for r in runs])),
                     "sd": float(np.std([r[m] for r in runs], ddof=1)) if len(runs) > 1
                     else 0.0,
                     "values": [round(r[m], 6) for r in runs]} for m in metrics}
        rows.append({"method": method, "probe": probe, "split": split, "metrics": stats})
    for row in rows:
        base = next((r for r in rows if r["method"] == RAW and r["probe"] == row["probe"]
                     and r["split"] == row["split"]), None)
        row["relative_to_raw"] = {} if base is None else {
            m: _relative(row["metrics"][m]["mean"], base["metrics"][m]["mean"], up)
            for m, up in metrics.items()}
        row["paired_vs_raw"] = {} if base is None or row is base else {
            m: _paired(row["metrics"][m]["values"], base["metrics"][m]["values"])
            for m in metrics}
    _holm_per_table(rows, metrics)
    return {"task": task.name, "kind": task.kind, "unit": task.unit, "cell_m": task.cell_m,
            "cell": task.grid_cell.label,
            "n_units": len(labels.y), "classes": labels.classes, "seeds": list(seeds),
            "shuffled_labels": shuffle, "metrics": list(metrics),
            "higher_is_better": metrics, "rows": rows}


def _paired(values: list[float], base: list[float]) -> dict[str, float | None]:
    """Paired t-test against raw AlphaEarth over the same probe seeds. A replicate row (k
    training seeds, run-major) is tested over its training seeds: each seed's mean over the
    probe seeds against raw's mean over the same seeds (k pairs, k - 1 degrees of freedom).
    Pooling the k × n values as independent pairs would count raw's n values k times and
    hide the training-seed spread the replicates are there to show."""
    k = len(values) // max(1, len(base))
    if k <= 1:
        return probes.paired_test(values, base)
    per_seed = np.asarray(values, float).reshape(k, len(base)).mean(axis=1)
    return probes.paired_test(per_seed.tolist(), [float(np.mean(base))] * k)


def _holm_per_table(rows: list[dict[str, Any]], metrics: dict[str, bool]) -> None:
    """``p_holm``: each split's table is one family per metric (its rows with a p-value)."""
    for split in {r["split"] for r in rows}:
        for m in metrics:
            tested = [r["paired_vs_raw"][m] for r in rows if r["split"] == split
                      and r["paired_vs_raw"].get(m, {}).get("p") is not None]
            for test, adj in zip(tested, probes.holm([t["p"] for t in tested]), strict=True):
                test["p_holm"] = adj
                test["family"] = len(tested)


def _relative(value: float, base: float, higher_is_better: bool) -> float | None:
    """Relative improvement over raw AlphaEarth (positive = better), as a fraction."""
    if base == 0:
        return None
    return (value - base) / abs(base) if higher_is_better else (base - value) / abs(base)
