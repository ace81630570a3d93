"""Square grid tables as Zarr stores, for users who want the grid as an array."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from aether.core import aef
from aether.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    import geopandas as gpd


def write_zarr(frame: gpd.GeoDataFrame, path: Path) -> Path:
    """A square grid table as a Zarr store: ``embedding`` (band, y, x) plus the quality
    layers, coordinates in the grid's UTM crs; written aside and renamed into place."""
    import shutil

    import xarray as xr

    try:
        import zarr  # noqa: F401
    except ImportError:
        raise InputError("--zarr needs the zarr package", "pip install 'aether[ee]'") from None
    xs, ys = np.unique(frame["x"]), np.unique(frame["y"])[::-1]  # north first
    col = np.searchsorted(xs, frame["x"].to_numpy())
    row = np.searchsorted(-ys, -frame["y"].to_numpy())
    emb = np.full((aef.N_BANDS, len(ys), len(xs)), np.nan, np.float32)
    emb[:, row, col] = frame[list(aef.BANDS)].to_numpy(np.float32).T
    layers: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "embedding": (("band", "y", "x"), emb)}
    for name in ("weight", "valid_fraction", "norm"):
        a = np.full((len(ys), len(xs)), np.nan, np.float32)
        a[row, col] = frame[name].to_numpy(np.float32)
        layers[name] = (("y", "x"), a)
    ds = xr.Dataset(layers, coords={"band": list(aef.BANDS), "y": ys, "x": xs})
    ds.attrs["crs"] = str(frame.attrs.get("crs", ""))
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path
