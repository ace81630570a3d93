"""Buffer means agree with exactextract on every POI of the sample city (≤ 1e-4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from exactextract_ref import decoded_geotiff, ours_and_exactextract

from aether.io import tiles as tile_io


def test_sample_buffer_means_match_exactextract(sample_city, sample_extract, tmp_path) -> None:
    import geopandas as gpd

    pois = gpd.read_parquet(sample_extract / "pois.parquet")
    emb = pd.read_parquet(sample_extract / "poi_embeddings.parquet")
    index = tile_io.read_index(sample_city.tiles)
    assert len(index) == 1, "the parity check assumes the sample is one tile"
    tile = index.iloc[0]
    raster = decoded_geotiff(tile.path, tmp_path / "decoded.tif")
    for radius in (100.0, 200.0):
        ours, ref = ours_and_exactextract(emb, pois, tile, raster, radius)
        assert ours.shape == ref.shape == (len(pois), 64)
        assert not np.isnan(ref).any()
        diff = np.abs(ours - ref)
        assert diff.max() <= 1e-4, f"radius {radius}: max abs diff {diff.max():.2e}"
