"""AlphaEarth storage facts: quantisation, nodata, south-up tiles, the index schema."""

from __future__ import annotations

import numpy as np
import pytest

from aether.core import aef
from aether.errors import TilesError
from aether.io import tiles as tile_io


def test_dequantize_formula_and_nodata() -> None:
    q = np.array([-128, -127, -1, 0, 1, 64, 127], dtype=np.int8)
    v = aef.dequantize(q)
    assert np.isnan(v[0])
    expected = np.sign(q[1:]) * (q[1:].astype(float) / 127.5) ** 2
    np.testing.assert_allclose(v[1:], expected, rtol=1e-6)
    assert v[-1] == pytest.approx((127 / 127.5) ** 2)


def test_quantize_roundtrip_within_one_step() -> None:
    v = np.linspace(-1, 1, 1001)
    back = aef.dequantize(aef.quantize(v))
    step = 2 * np.sqrt(np.abs(v)) / 127.5 + (1 / 127.5) ** 2
    assert np.all(np.abs(back - v) <= step)
    assert aef.quantize(np.array([np.nan]))[0] == aef.NODATA


def test_mean_of_decoded_is_not_decoded_mean() -> None:
    """The trap: means must be taken over de-quantised values."""
    q = np.array([20, 120], dtype=np.int8)
    right = aef.dequantize(q).mean()
    wrong = aef.dequantize(np.array([70], dtype=np.int8))[0]
    assert abs(right - wrong) > 0.05


@pytest.mark.parametrize("south_up", [True, False])
def test_tile_roundtrip_reads_through_transform(tmp_path, south_up: bool) -> None:
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, size=(64, 12, 9), dtype=np.int16).astype(np.int8)
    q[:, 0, 0] = aef.NODATA  # north-west corner pixel is nodata
    path = tmp_path / "2024" / "35N" / "t-0-0.tiff"
    tile_io.write_tile(path, q, "EPSG:32635", 385_000, 6_675_000, south_up=south_up)
    rec = tile_io.tile_record(path, 2024)
    assert (rec["utm_west"], rec["utm_north"]) == (385_000, 6_675_000)
    assert (rec["utm_east"], rec["utm_south"]) == (385_090, 6_674_880)
    tile_io.write_index([rec], tmp_path)
    index = tile_io.read_index(tmp_path)
    assert list(index.columns) == list(aef.INDEX_COLUMNS)
    assert index.iloc[0].utm_zone == "35N"
    # read the north-west 3x3 pixels by coordinates, whatever the storage order
    block = tile_io.read_block(index.iloc[0].path, (385_000, 6_674_970, 385_030, 6_675_000))
    assert block is not None and block.shape == (3, 3)
    north_up = block.values if block.dy < 0 else block.values[::-1]
    assert np.isnan(north_up[0, 0]).all()
    np.testing.assert_array_equal(north_up[1, 2], aef.dequantize(q[:, 1, 2]))
    assert tile_io.read_block(index.iloc[0].path, (0, 0, 10, 10)) is None


def test_missing_and_corrupt_inputs(tmp_path) -> None:
    with pytest.raises(TilesError, match="no AlphaEarth index"):
        tile_io.read_index(tmp_path)
    bad = tmp_path / "bad.tiff"
    bad.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(TilesError, match="cannot read tile"):
        tile_io.read_block(str(bad))
