"""Zonal kernel vs exactextract: throughput ratio and peak memory, side by side.

    .venv/bin/python tests/benchmarks/bench_zonal.py            # sample + 10.24 M px / 100k POIs
    .venv/bin/python tests/benchmarks/bench_zonal.py --quick    # sample only

Each method runs in its own process (so peak RSS is its own) on the same buffers and reports
its CPU time (``time.process_time``: all its threads; wall time is noise on a shared machine)
with the load average; the results are compared (max abs diff). Generated rasters go to a
temp dir, never the repo; the figures to ``--out`` (JSON) for ``render_docs.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactextract_ref import decoded_geotiff, exactextract_means
from results import in_child, measured_at, write_results

from aether.core import aef
from aether.io import tiles as tile_io

RADII = (100.0, 200.0)


def _ours_kernel(tile: str, x: np.ndarray, y: np.ndarray, q) -> None:
    from aether.core import compiled  # noqa: F401  (numba's machine code loads here, as imports)
    from aether.core.zonal import buffer_means

    t0 = time.process_time()
    block = tile_io.read_block(tile)
    out = [buffer_means(block, x, y, r).mean for r in RADII]
    q.put((time.process_time() - t0, _peak_mb(), out))


def _ours_source(tiles: str, lon: np.ndarray, lat: np.ndarray, year: int, q) -> None:
    import geopandas as gpd

    from aether.core import compiled  # noqa: F401  (numba's machine code loads here, as imports)
    from aether.embeddings.cog import CogSource

    pois = gpd.GeoDataFrame({"poi_id": [f"p{i:07d}" for i in range(len(lon))]},
                            geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    t0 = time.process_time()
    df = CogSource(tiles).point_means(pois, RADII, year)
    dt = time.process_time() - t0
    out = [df[df.radius_m == r][list(aef.BANDS)].to_numpy() for r in RADII]
    q.put((dt, _peak_mb(), out))


def _exact(raster: Path, x: np.ndarray, y: np.ndarray, crs: str, q) -> None:
    t0 = time.process_time()
    out = [exactextract_means(raster, x, y, r, crs) for r in RADII]
    q.put((time.process_time() - t0, _peak_mb(), out))


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare(label: str, tiles: str, lon: np.ndarray, lat: np.ndarray, year: int,
            work: Path, exact_n: int | None = None) -> dict:
    """Print both methods side by side; exactextract may run on the first ``exact_n`` POIs
    only (it is slow on 64 bands), its throughput then measured on that subset."""
    from pyproj import Transformer

    tile = tile_io.read_index(tiles).iloc[0]
    x, y = Transformer.from_crs("EPSG:4326", tile.crs, always_xy=True).transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    raster = decoded_geotiff(tile.path, work / f"{label}_decoded.tif")
    with __import__("rasterio").open(tile.path) as ds:
        npx = ds.width * ds.height
    m = len(x) if exact_n is None else min(exact_n, len(x))
    load0 = os.getloadavg()[0]
    ee_t, ee_mb, ee_out = in_child(_exact, raster, x[:m], y[:m], tile.crs)
    k_t, k_mb, k_out = in_child(_ours_kernel, tile.path, x, y)
    s_t, s_mb, s_out = in_child(_ours_source, tiles, lon, lat, year)
    ok = ~np.isnan(ee_out[0][:, 0])
    diff_k = max(np.nanmax(np.abs(a[:m][ok] - b[ok])) for a, b in zip(k_out, ee_out, strict=True))
    diff_s = max(np.nanmax(np.abs(a[:m][ok] - b[ok])) for a, b in zip(s_out, ee_out, strict=True))
    n = len(lon) * len(RADII)
    ee_rate = m * len(RADII) / ee_t
    print(f"\n## {label}: {npx / 1e6:.2f} M px × 64 bands, {len(lon):,} POIs × {len(RADII)} radii")
    print(f"{'method':<34}{'CPU s':>9}{'buffers/s':>12}{'peak MB':>9}{'vs exactextract':>17}"
          f"{'max |diff|':>12}")
    if m < len(x):
        print(f"(exactextract on the first {m:,} POIs; its rate is measured on those)")
    print(f"{'exactextract (raster-sequential)':<34}{ee_t:>9.2f}{ee_rate:>12,.0f}{ee_mb:>9.0f}"
          f"{1.0:>16.2f}x{'-':>12}")
    print(f"{'aether kernel (decode + means)':<34}{k_t:>9.2f}{n / k_t:>12,.0f}{k_mb:>9.0f}"
          f"{n / k_t / ee_rate:>16.2f}x{diff_k:>12.1e}")
    print(f"{'aether COG source (int8 tiles)':<34}{s_t:>9.2f}{n / s_t:>12,.0f}{s_mb:>9.0f}"
          f"{n / s_t / ee_rate:>16.2f}x{diff_s:>12.1e}")
    rows = [("exactextract (raster-sequential, in-memory float32 GeoTIFF)", ee_t, ee_rate, ee_mb,
             1.0, None),
            ("aether kernel (whole tile decoded, then means)", k_t, n / k_t, k_mb,
             n / k_t / ee_rate, diff_k),
            ("aether COG source (int8 tiles)", s_t, n / s_t, s_mb, n / s_t / ee_rate, diff_s)]
    return {"label": label, "mpx": npx / 1e6, "pois": len(lon), "radii": len(RADII),
            "exact_pois": m, "load": round((load0 + os.getloadavg()[0]) / 2, 1),
            "rows": [dict(zip(("method", "cpu_s", "buffers_per_cpu_s", "peak_mb",
                               "vs_exactextract", "max_abs_diff"), r, strict=True))
                     for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="sample city only")
    ap.add_argument("--size-px", type=int, default=3200, help="side of the large raster")
    ap.add_argument("--pois", type=int, default=100_000)
    ap.add_argument("--exact-pois", type=int, default=10_000,
                    help="POIs exactextract runs on for the large raster (all: 0)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zonal.json"))
    args = ap.parse_args()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import geopandas as gpd

        from aether.pipeline.extract import ExtractRequest, run_extract
        from aether.sample.city import ensure_sample

        sample = ensure_sample(work / "data")
        out = run_extract(ExtractRequest(city="Helsinki", data_dir=work / "data", offline=True))
        pois = gpd.read_parquet(out.out_dir / "pois.parquet")
        cases.append(compare("sample (central Helsinki)", str(sample.tiles),
                             pois.geometry.x.to_numpy(), pois.geometry.y.to_numpy(),
                             sample.year, work))
        if not args.quick:
            cases.append(_large(args, work))
    write_results(args.out, {"quick": args.quick, "cases": cases, **measured_at()})


def _large(args: argparse.Namespace, work: Path) -> dict:
    """A generated raster of ``--size-px`` squared, ``--pois`` random POIs."""
    from pyproj import Transformer

    from aether.sample.city import synthetic_tiles

    crs, west, south, size = "EPSG:32648", 350_000.0, 130_000.0, args.size_px
    tiles = synthetic_tiles(work / "large", crs=crs, west=west, south=south,
                            width_px=size, height_px=size, seed=1, year=2024,
                            tile_px=size)
    rng = np.random.default_rng(0)
    m = 250.0
    x = rng.uniform(west + m, west + size * 10 - m, args.pois)
    y = rng.uniform(south + m, south + size * 10 - m, args.pois)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    return compare("generated raster", str(tiles), np.asarray(lon), np.asarray(lat), 2024,
                   work, exact_n=args.exact_pois or None)


if __name__ == "__main__":
    main()
