"""The xee source through the loopback emulator: the genuine ee client and xee 0.1.x.

Point means agree with the COG source (≤ 1e-4) and the Earth Engine source (≤ 1e-3: EE
reduces over its buffer polygon with 8-bit coverage weights), one computePixels request
carries all 64 bands of a chunk and fits EE's request size for the dtype served, and a
missing year is a clear error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import require

from aether.core import aef
from aether.embeddings import get_source
from aether.embeddings.xee import CHUNK_PX, REQUEST_BYTES, View
from aether.errors import CoverageError

require("xee")

KEY = ["poi_id", "radius_m"]
BANDS = list(aef.BANDS)
QUALITY = ["weight", "valid_fraction", "norm"]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


def _max_diff(a: pd.DataFrame, b: pd.DataFrame, rtol: float = 1e-6) -> float:
    """Largest difference of the means (A00..A63); weights agree to ``rtol`` (float32
    rounding between pixel sources)."""
    a, b = _sorted(a), _sorted(b)
    assert a[KEY].equals(b[KEY])
    np.testing.assert_allclose(a[QUALITY].to_numpy(float), b[QUALITY].to_numpy(float),
                               rtol=rtol)
    return float(np.nanmax(np.abs(a[BANDS].to_numpy(float) - b[BANDS].to_numpy(float))))


@pytest.fixture
def pois(sample_extract: Path):
    import geopandas as gpd

    return gpd.read_parquet(sample_extract / "pois.parquet")


def _pixel_requests(emulator) -> int:
    return sum(e["route"] == "image:computePixels" for e in emulator.log)


def test_module_uses_the_real_xee_package() -> None:
    import xee

    import aether.embeddings.xee as ours

    assert ours.__name__ == "aether.embeddings.xee"
    assert xee.__name__ == "xee" and hasattr(xee, "EarthEngineBackendEntrypoint")
    assert sys.modules["xee"] is xee


def test_chunks_fit_the_pixel_request_limit() -> None:
    assert CHUNK_PX % 64 == 0
    # served float64 (float32 bands unmasked with xee's int32 sentinel) + EE's mask byte
    assert aef.N_BANDS * CHUNK_PX**2 * 9 <= REQUEST_BYTES


def test_the_served_bytes_are_what_the_server_counts(ee_server, emulator, sample_city) -> None:
    """The emulator counts (value bytes + 1) for the dtype it serves after xee's unmask: the
    default chunk passes; a chunk fitted to 5-byte float32 values is refused as EE refuses."""
    from aether.embeddings.earthengine.session import EESettings
    from aether.embeddings.xee import read_window

    session = EESettings(ee_server, "demo-project")
    x0, y0 = 385400.0, 6671600.0 + 4000
    for chunk, fits in ((CHUNK_PX, True), (384, False)):
        view = View(session, 2024, sample_city.place.crs, x0, y0, chunk, chunk, chunk)
        if fits:
            assert read_window(view, 0, chunk, 0, chunk).shape == (64, chunk, chunk)
        else:
            with pytest.raises(Exception, match="must be less than or equal to 50331648 bytes"):
                read_window(view, 0, chunk, 0, chunk)


def test_point_means_match_cog_in_one_request(ee_server, emulator, pois, sample_extract,
                                              tmp_path: Path) -> None:
    src = get_source("xee", workdir=tmp_path, ee_url=ee_server, ee_project="demo-project")
    got = src.point_means(pois, [100.0, 200.0], 2024)
    cog = pd.read_parquet(sample_extract / "poi_embeddings.parquet")
    assert len(got) == len(cog) == 2 * len(pois)
    assert _max_diff(got, cog) <= 1e-4
    assert got["valid_fraction"].min() > 0.99  # the sample covers every buffer
    # the sample's POIs fit in one chunk: one request for all 64 bands and both radii
    assert _pixel_requests(emulator) == 1


def test_xee_cog_and_ee_sources_agree(ee_server, pois, sample_extract, tmp_path: Path) -> None:
    some = pois.iloc[::10].reset_index(drop=True)
    opts = {"ee_url": ee_server, "ee_project": "demo-project"}
    xee_rows = get_source("xee", workdir=tmp_path / "x", **opts).point_means(some, [100.0], 2024)
    ee_rows = get_source("ee", workdir=tmp_path / "e", **opts).point_means(some, [100.0], 2024)
    cog_rows = get_source("cog", tiles=sample_extract.parents[1] / "_sample" / "helsinki"
                          / "tiles").point_means(some, [100.0], 2024)
    assert len(xee_rows) == len(ee_rows) == len(cog_rows) == len(some)
    assert _max_diff(xee_rows, cog_rows) <= 1e-4
    # Earth Engine reduces over its buffer polygon (area within 1e-3 of the circle) with
    # coverage weights quantised to 1/255: weights within 0.2%, means within 1e-3
    assert _max_diff(xee_rows, ee_rows, rtol=2e-3) <= 1e-3


def test_one_request_per_chunk_for_64_bands(ee_server, emulator, sample_city,
                                            tmp_path: Path) -> None:
    """Small chunks: a 4×4-chunk view costs exactly 16 pixel requests, not 16 × 64."""
    from aether.embeddings.xee import open_array

    src = get_source("xee", ee_url=ee_server, ee_project="demo-project", xee_chunk=64)
    view = View.over(src.session, 2024, sample_city.place.crs,
                     (385400.0, 6671600.0, 385400.0 + 2560, 6671600.0 + 2560), chunk=64)
    arr = open_array(view)
    assert arr.shape == (64, 256, 256) and arr.chunks[1] == (64,) * 4
    block = arr[:, 70:120, 30:90].values  # spans 1 × 2 chunks
    assert _pixel_requests(emulator) == 2 and np.isfinite(block).all()
    arr.sum().compute()
    assert _pixel_requests(emulator) == 2 + 16
    km2 = 2.56 * 2.56
    assert 16 / km2 < 2.5  # 64-band requests per km² at this (tiny) chunk size


def test_year_without_images_is_a_coverage_error(ee_server, pois, tmp_path: Path) -> None:
    src = get_source("xee", workdir=tmp_path, ee_url=ee_server, ee_project="demo-project")
    with pytest.raises(CoverageError, match="no AlphaEarth images for year 2019"):
        src.point_means(pois.iloc[:3], [100.0], 2019)
