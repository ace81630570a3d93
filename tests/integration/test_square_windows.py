"""Square pixel windows through real sources: the COG tiles of the sample city and the Earth
Engine source (genuine ee client, emulator on loopback), which sends each square as a
``Geometry.Rectangle`` on the UTM 10 m grid; both must give the same table."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from support import require

from aether.core.aef import BANDS
from aether.core.windows import parse_window
from aether.embeddings import get_source
from aether.io.tables import sort_poi_embeddings

require("ee")


def test_cog_and_ee_agree_on_square_windows(sample_city, sample_extract, ee_server, tmp_path,
                                            reset_ee):
    pois = gpd.read_parquet(sample_extract / "pois.parquet")
    part = pois.iloc[:: max(1, len(pois) // 80)].head(80).reset_index(drop=True)
    radii = list(parse_window("square:4,9"))
    cog = sort_poi_embeddings(get_source("cog", tiles=sample_city.tiles)
                              .point_means(part, radii, 2024))
    ee = sort_poi_embeddings(get_source("ee", workdir=tmp_path / "w", ee_url=ee_server,
                                        ee_project="demo")
                             .point_means(part, radii, 2024))
    assert sorted(cog["radius_m"].unique()) == [-95.0, -45.0]
    pd.testing.assert_frame_equal(ee[["poi_id", "year", "radius_m"]],
                                  cog[["poi_id", "year", "radius_m"]])
    a, b = ee[list(BANDS)].to_numpy(), cog[list(BANDS)].to_numpy()
    assert (np.isnan(a) == np.isnan(b)).all() and np.isfinite(b).any()
    assert np.nanmax(np.abs(a - b)) <= 1e-4
    assert np.nanmax(np.abs(ee["valid_fraction"] - cog["valid_fraction"])) <= 1e-5
    # a square is not the circle: the 9 x 9 px window differs from the 100 m buffer
    circle = get_source("cog", tiles=sample_city.tiles).point_means(part, [100.0], 2024)
    assert np.nanmax(np.abs(circle[list(BANDS)].to_numpy()
                            - cog[cog["radius_m"] == -45.0][list(BANDS)].to_numpy())) > 1e-3


@pytest.fixture
def reset_ee():
    yield
    import ee

    ee.Reset()
