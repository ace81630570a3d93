"""Small synthetic city tables for the trainer's tests and benchmark.

Real Parquet files in the table contracts. Each POI has a hidden 8-d latent that both its
AlphaEarth means and its text vector depend on (through fixed random maps plus noise), so
there is something to learn; text vectors go into the real text cache, so no text model is
loaded. Some POIs share a text, a few share a location, as in a real city.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from aether.core.aef import BANDS
from aether.io.tables import (
    POI_EMBEDDINGS_FILE,
    POIS_FILE,
    poi_embeddings_frame,
    sort_poi_embeddings,
    write_parquet,
)
from aether.ml.text import DEFAULT_TEXT_MODEL, TEXT_EMBEDDINGS_FILE, cache_vectors


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def write_synthetic_city(root: Path, n: int = 600, *, seed: int = 0, year: int = 2024,
                         radii: tuple[float, ...] = (100.0, 200.0), n_texts: int | None = None,
                         slug: str = "synthville", first_id: int = 0) -> Path:
    """Write pois, poi_embeddings and a text cache under ``root/slug/year``; return the dir.
    POI ids count from ``first_id`` (cities trained together must not share ids)."""
    rng = np.random.default_rng(seed)
    city = root / slug / str(year)
    n_texts = n_texts or max(2, n // 3)
    text_latent = rng.normal(size=(n_texts, 8))
    which = rng.integers(0, n_texts, n)
    latent = text_latent[which] + 0.3 * rng.normal(size=(n, 8))
    texts = np.array([f"A place of kind {i}, a type of thing." for i in range(n_texts)])
    lon = 24.90 + rng.uniform(0, 0.05, n)
    lat = 60.15 + rng.uniform(0, 0.03, n)
    lon[1::25], lat[1::25] = lon[0::25][: len(lon[1::25])], lat[0::25][: len(lat[1::25])]
    ids = [f"osm:node/{i}" for i in range(first_id, first_id + n)]
    pois = gpd.GeoDataFrame(
        {"poi_id": ids, "name": None, "category": "kind", "top_category": "thing",
         "text": texts[which], "source": "synthetic"},
        geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326",
    )
    write_parquet(pois, city / POIS_FILE)
    w_ae = rng.normal(size=(8, len(BANDS)))
    frames = []
    for k, r in enumerate(radii):
        mean = _unit(latent @ w_ae + (0.5 + 0.2 * k) * rng.normal(size=(n, len(BANDS)))) * 0.9
        ones = np.ones(n, np.float32)
        frames.append(poi_embeddings_frame(ids, year, r, mean, ones, ones, ones * 0.9))
    emb = sort_poi_embeddings(pd.concat(frames, ignore_index=True))
    write_parquet(emb, city / POI_EMBEDDINGS_FILE)
    w_text = rng.normal(size=(8, 384))
    vectors = _unit(text_latent @ w_text + 0.2 * rng.normal(size=(n_texts, 384)))
    cache_vectors(list(texts), vectors, cache_path=city / TEXT_EMBEDDINGS_FILE,
                  model_name=DEFAULT_TEXT_MODEL)
    return city
