"""Training pairs from a city's tables: POI texts beside their base and augmented means.

Reads only ``pois.parquet``, ``poi_embeddings.parquet`` and the text cache of a city
directory. A stable hash of each POI id puts a fixed test split aside for every preset, so
the presets can be compared on the same held-out POIs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aether.core.aef import BANDS
from aether.core.windows import extract_option, label
from aether.errors import ConfigError, TableError
from aether.io.store import CityStore
from aether.io.tables import (
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    read_json,
    read_table,
    sha256_file,
)
from aether.ml.config import DEFAULT_WINDOWS, REFERENCE_WINDOWS, TrainConfig
from aether.ml.text import encode_texts


@dataclass
class Pairs:
    """A city's training pairs as arrays; row i is one POI."""

    poi_id: np.ndarray  # (N,) str
    base: np.ndarray  # (N, 64) float32
    aug: np.ndarray  # (N, 64) float32
    text_id: np.ndarray  # (N,) int64 into text_vectors
    text_vectors: np.ndarray  # (U, D) float32
    xy: np.ndarray  # (N, 2) float64 metres in a local UTM crs
    counts: dict[str, int]
    radii: tuple[float, float] = (100.0, 200.0)  # the (base, aug) windows the rows come from
    checksums: dict[str, str] = dataclasses.field(default_factory=dict)


def _unit_hash(values: pd.Series) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per value (same on every machine)."""
    h = pd.util.hash_pandas_object(values, index=False, hash_key="aether-split-key")
    return h.to_numpy().astype(np.float64) / 2.0**64


def split_labels(pairs: Pairs, cfg: TrainConfig) -> np.ndarray:
    """'train' / 'val' / 'test' per row: random by POI id or by spatial block."""
    return split_of(pairs.poi_id, pairs.xy, cfg)


def split_of(poi_id: np.ndarray, xy: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The split of POIs by id and UTM position alone (evaluation finds the held-out POIs)."""
    if cfg.split == "random":
        keys = pd.Series(poi_id, dtype="string")
    elif cfg.split == "blocks":
        cell = np.floor(xy / cfg.block_m).astype(np.int64)
        keys = pd.Series(cell[:, 0] * 1_000_003 + cell[:, 1])
    else:
        raise ConfigError(f"unknown split {cfg.split!r}", "use 'random' or 'blocks'")
    u = _unit_hash(keys)
    labels = np.full(len(u), "train", dtype=object)
    labels[u < cfg.test_fraction + cfg.val_fraction] = "val"
    labels[u < cfg.test_fraction] = "test"
    return labels


def year_of(city_dir: Path) -> int | None:
    return int(city_dir.name) if city_dir.name.isdigit() else None


def _radius_rows(emb: pd.DataFrame, radius: float, radii: np.ndarray) -> pd.DataFrame:
    """The rows at one radius, indexed by poi_id; a missing radius is a clear error."""
    rows = emb[np.isclose(emb["radius_m"].to_numpy(np.float64), radius)]
    if rows.empty:
        have = ", ".join(label(r) for r in radii)
        raise TableError(
            f"poi_embeddings has no rows at {label(radius)} (it has {have})",
            f"re-run `aether extract` with {extract_option(radius)}, or train with windows "
            "it has",
        )
    if rows["poi_id"].duplicated().any():
        raise TableError(f"poi_embeddings repeats POIs at radius {radius:g} m",
                         "re-create it with `aether extract`")
    return rows.set_index("poi_id")


def load_pairs(city_dir: Path, cfg: TrainConfig) -> Pairs:
    """Join POI texts with their base and augmented AlphaEarth means, column-wise.

    Rows with a NaN vector at either radius are skipped and counted, as are POIs without
    embedding rows; embedding rows naming unknown POIs mean the tables do not belong together.
    """
    store = CityStore.at(city_dir)
    pois = read_table(store.pois, ["poi_id", "text", "geometry"], POIS_FILE)
    checksums = _check_manifest(city_dir)
    emb = read_table(store.poi_embeddings, ["poi_id", "year", "radius_m", *BANDS],
                     POI_EMBEDDINGS_FILE)
    years = sorted(int(y) for y in emb["year"].unique())
    if len(years) > 1 or (year_of(city_dir) not in (None, years[0])):
        raise TableError(
            f"poi_embeddings holds year(s) {', '.join(map(str, years))} in the directory for "
            f"{city_dir.name}: tables from different years are mixed",
            "re-run `aether extract` for this city and year",
        )
    foreign = ~emb["poi_id"].isin(pois["poi_id"])
    if foreign.any():
        raise TableError(
            f"{int(foreign.sum())} of {len(emb)} poi_embeddings rows name POIs missing from "
            "pois.parquet: tables from different cities or runs are mixed",
            "re-run `aether extract` so both tables come from one run",
        )
    radii = np.unique(emb["radius_m"].to_numpy(np.float64))
    r_base, r_aug = windows_for(cfg, radii)
    base = _radius_rows(emb, r_base, radii)
    aug = _radius_rows(emb, r_aug, radii)
    pois = pois.drop_duplicates("poi_id").set_index("poi_id")
    ids = pois.index.intersection(base.index).intersection(aug.index)
    b = base.loc[ids, list(BANDS)].to_numpy(np.float32)
    a = aug.loc[ids, list(BANDS)].to_numpy(np.float32)
    ok = np.isfinite(b).all(1) & np.isfinite(a).all(1)
    counts = {
        "pois": len(pois),
        "missing_embeddings": len(pois) - len(ids),
        "skipped_nan": int((~ok).sum()),
        "pairs": int(ok.sum()),
    }
    if counts["pairs"] < 2:
        raise TableError(
            f"{city_dir} has {counts['pairs']} usable POI pairs "
            f"({counts['skipped_nan']} with NaN vectors)",
            "extract a larger area, or one inside the AlphaEarth coverage",
        )
    ids = ids[ok]
    kept = pois.loc[ids]
    texts, text_id = np.unique(kept["text"].astype(str).to_numpy(), return_inverse=True)
    vectors = encode_texts(list(texts), cache_path=store.text_embeddings,
                           model_name=cfg.text_model)
    geom = kept.geometry
    if geom.crs is not None and geom.crs.is_geographic:
        geom = geom.to_crs(geom.estimate_utm_crs())
    xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()]).astype(np.float64)
    return Pairs(np.asarray(ids, dtype=object), b[ok], a[ok], text_id.astype(np.int64).ravel(),
                 vectors, xy, counts, checksums=checksums, radii=(r_base, r_aug))


def merge_pairs(parts: dict[str, Pairs]) -> Pairs:
    """Several cities' pairs (by city slug) as one set: rows in city order, one text vector
    per distinct text (the same text in two cities is one positive, not two rivals), the
    checksums of every city's tables. Cities must share their windows and no POI id."""
    first = next(iter(parts.values()))
    radii = {p.radii for p in parts.values()}
    if len(radii) > 1:
        raise TableError("the cities' tables hold different windows: "
                         + "; ".join(f"{c} {p.radii[0]:g}/{p.radii[1]:g} m"
                                     for c, p in parts.items()),
                         "extract every city with the same --radius values")
    ids = np.concatenate([p.poi_id for p in parts.values()])
    if len(np.unique(ids)) < len(ids):
        raise TableError("the cities share POI ids (overlapping extracts?)",
                         "train on cities whose POIs differ, or one city at a time")
    text_rows = np.concatenate([p.text_vectors[p.text_id] for p in parts.values()])
    vectors, text_id = np.unique(text_rows, axis=0, return_inverse=True)
    counts = {k: sum(p.counts[k] for p in parts.values()) for k in first.counts}
    checksums = {f"{city}/{name}": value for city, p in parts.items()
                 for name, value in p.checksums.items()}
    return Pairs(ids, np.concatenate([p.base for p in parts.values()]),
                 np.concatenate([p.aug for p in parts.values()]),
                 text_id.astype(np.int64).ravel(), vectors.astype(np.float32),
                 np.concatenate([p.xy for p in parts.values()]), counts, first.radii, checksums)


def windows_for(cfg: TrainConfig, radii: np.ndarray) -> tuple[float, float]:
    """The (base, aug) windows of a config; unset ones (the paper preset) are the reference's
    squares when the table holds both, else the 100 / 200 m circles."""
    if cfg.base_radius_m is not None and cfg.aug_radius_m is not None:
        return cfg.base_radius_m, cfg.aug_radius_m
    have = np.isclose(radii[:, None], np.array(REFERENCE_WINDOWS)[None, :]).any(0).all()
    return REFERENCE_WINDOWS if have else DEFAULT_WINDOWS


def _check_manifest(city_dir: Path) -> dict[str, str]:
    """Checksums of the two tables; they must be the ones this directory's extract wrote."""
    store = CityStore.at(city_dir)
    sums = {p.name: sha256_file(p) for p in (store.pois, store.poi_embeddings) if p.is_file()}
    if not store.manifest.is_file():
        return sums
    try:
        manifest = read_json(store.manifest)
    except ValueError as e:
        raise TableError(f"{store.manifest} is not valid JSON",
                         "re-run `aether extract`") from e
    place = manifest.get("config", {}).get("place")
    if place not in (None, city_dir.parent.name):
        raise TableError(f"{city_dir} holds the extract of {place!r}",
                         "tables from different cities are mixed; re-run `aether extract`")
    for name, out in manifest.get("outputs", {}).items():
        if name in sums and out.get("sha256") not in (None, sums[name]):
            raise TableError(
                f"{name} in {city_dir} is not the table its manifest recorded: tables from "
                "different cities or runs are mixed", "re-run `aether extract` for this city")
    return sums
