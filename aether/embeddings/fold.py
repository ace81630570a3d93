"""Per-window sums of POI buffers folded into poi_embeddings rows, in bounded memory.

Sources with pixels (COG tiles, xee chunks) hand over the sums of every window a buffer
touches: one buffer cut by several windows is the sum of its parts. The parts are spooled
to disk as they arrive, one file per output row group (rows go in the canonical order:
radius_m, then poi_id), and each row group is then reduced, finalised and handed on alone.
Memory is one row group and the tasks in flight, whatever the POI count; the spool is
~300 bytes a part on disk (page cache), never in the process.

Parts of a row are added in the order of their window's key, so the table is the same
bytes however the tasks were scheduled or in what order they finished.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from aether.core import aef, windows, zonal

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd
    import pyarrow as pa

#: What a window's task returns: its key (fixes the order parts are added in), the POIs'
#: positions in the input, and one Partial per radius (in the order of ``radii``).
WindowSums = tuple[int, np.ndarray, list[zonal.Partial]]
#: At most this many spool files at once (one per row group): larger tables get larger groups.
MAX_SPOOL_FILES = 512


def _record(n_bands: int) -> np.dtype:
    return np.dtype([("row", "<i8"), ("key", "<i8"), ("valid", "<f8"),
                     ("sums", "<f4", (n_bands,))])


class PointFold:
    """Folds ``WindowSums`` of ``pois`` × ``radii`` into row groups of the table."""

    def __init__(self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int,
                 spool: Path, rows_per_group: int | None = None) -> None:
        from aether.io.tables import ROW_GROUP, sorted_poi_ids

        self.n, self.year, self.spool = len(pois), int(year), Path(spool)
        self.ids, self.rank = sorted_poi_ids(pois["poi_id"])
        order = np.argsort(np.asarray(radii, dtype=np.float32), kind="stable")  # radius_m order
        self.slot = np.argsort(order)
        self.radii = [float(radii[k]) for k in order]
        self.area = np.array([windows.area_px(r, aef.PIXEL_SIZE_M**2) for r in self.radii])
        total = self.n * len(self.radii)
        self.group_rows = rows_per_group or max(ROW_GROUP, math.ceil(total / MAX_SPOOL_FILES))
        self.n_groups = math.ceil(total / self.group_rows) if total else 0
        self.total = total
        self._files: dict[int, IO[bytes]] = {}
        self._dtype = _record(aef.N_BANDS)

    def add(self, result: WindowSums) -> None:
        """Spool one window's parts, each to the file of its row group."""
        key, idx, parts = result
        at = self.rank[np.asarray(idx, dtype=np.int64)]
        for k, part in enumerate(parts):
            rec = np.empty(len(at), self._dtype)
            rec["row"] = self.slot[k] * self.n + at
            rec["key"] = key
            rec["valid"] = part.valid_weight
            rec["sums"] = part.weighted_sum
            group = rec["row"] // self.group_rows
            order = np.argsort(group, kind="stable")
            rec, group = rec[order], group[order]
            cuts = np.flatnonzero(np.diff(group)) + 1
            for piece in np.split(rec, cuts):
                if len(piece):
                    self._file(int(piece["row"][0] // self.group_rows)).write(piece.tobytes())

    def _file(self, group: int) -> IO[bytes]:
        f = self._files.get(group)
        if f is None:
            f = self._files[group] = open(self.spool / f"{group}.bin", "ab")  # noqa: SIM115
        return f

    def close(self) -> None:
        """Close the spool files (their data stays until folded)."""
        for f in self._files.values():
            f.close()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The table's row groups in order, each reduced from its spool file alone."""
        import pyarrow as pa

        from aether.io.tables import poi_embeddings_schema

        schema = poi_embeddings_schema()
        self.close()
        for g in range(self.n_groups):
            lo = g * self.group_rows
            m = min(self.group_rows, self.total - lo)
            sums = np.zeros((m, aef.N_BANDS), np.float32)
            valid = np.zeros(m)
            path = self.spool / f"{g}.bin"
            if path.exists():
                rec = np.fromfile(path, self._dtype)
                path.unlink()
                rec = rec[np.lexsort((rec["key"], rec["row"]))]
                rows, first = np.unique(rec["row"] - lo, return_index=True)
                sums[rows] = np.add.reduceat(rec["sums"], first, axis=0)
                valid[rows] = np.add.reduceat(rec["valid"], first)
                del rec
            row = np.arange(lo, lo + m)
            slot = row // self.n
            means = zonal.finalize_area(zonal.Partial(sums, valid, aef.N_BANDS),
                                        self.area[slot], in_place=True)
            radius = np.asarray(self.radii, np.float32)[slot]
            cols = [self.ids.take(pa.array(row % self.n)), pa.array(np.full(m, self.year,
                                                                            np.int32)),
                    pa.array(radius), *(pa.array(means.mean[:, b]) for b in range(aef.N_BANDS)),
                    *(pa.array(np.asarray(v, np.float32)) for v in
                      (means.weight, means.valid_fraction, means.norm))]
            yield pa.RecordBatch.from_arrays(cols, schema=schema)


def _folded(fold: PointFold, results: Iterable[WindowSums]) -> PointFold:
    """``fold`` with every result added; its spool files closed if a task fails."""
    try:
        for result in results:
            fold.add(result)
    except BaseException:
        fold.close()
        raise
    return fold


@contextlib.contextmanager
def _spool_beside(target: Path | None) -> Iterator[Path]:
    """A scratch directory for the spool: beside ``target`` (named as its temp files, so a
    killed run's spool is removed by the next write of it), or in the system temp dir."""
    import shutil

    if target is None:
        with tempfile.TemporaryDirectory(prefix="aether-fold-") as tmp:
            yield Path(tmp)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    spool = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp",
                                  dir=target.parent))
    try:
        yield spool
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def write_point_means(pois: gpd.GeoDataFrame, radii: Sequence[float], year: int,
                      results: Iterable[WindowSums], path: str | os.PathLike[str]) -> int:
    """The poi_embeddings table written at ``path`` (atomically) as the results arrive;
    the number of rows."""
    from aether.io.tables import naming, poi_embeddings_schema, write_batches

    target = Path(path)
    with naming(target), _spool_beside(target) as spool:
        fold = _folded(PointFold(pois, radii, year, spool), results)
        return write_batches(fold.batches(), poi_embeddings_schema(), target)


def point_means_table(pois: gpd.GeoDataFrame, radii: Sequence[float], year: int,
                      results: Iterable[WindowSums]) -> pd.DataFrame:
    """The poi_embeddings rows in memory, in the canonical order (no sorting copy)."""
    import pandas as pd
    import pyarrow as pa

    from aether.io.tables import poi_embeddings_schema

    with _spool_beside(None) as spool:
        fold = _folded(PointFold(pois, radii, year, spool), results)
        table = pa.Table.from_batches(list(fold.batches()), schema=poi_embeddings_schema())
    strings = pd.StringDtype("pyarrow")
    return table.to_pandas(types_mapper=lambda t: strings if t == pa.large_string() else None,
                           split_blocks=True, self_destruct=True)

