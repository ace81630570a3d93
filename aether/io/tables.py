"""Table contracts between steps, Parquet IO with atomic writes, and run manifests.

Every write goes to a temporary file beside its target and is renamed into place, so a
crash or a bad input never leaves a half-written table behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.core.aef import BANDS
from aether.errors import TableError
from aether.io.store import BASEMAP_FILE as BASEMAP_FILE  # the layout's names, re-exported
from aether.io.store import MANIFEST_FILE as MANIFEST_FILE
from aether.io.store import POI_EMBEDDINGS_FILE as POI_EMBEDDINGS_FILE
from aether.io.store import POIS_FILE as POIS_FILE
from aether.io.store import SAMPLE_DIR as SAMPLE_DIR

if TYPE_CHECKING:
    import pandas as pd  # imported where used: the client of a fleet reads no table
    import pyarrow as pa

POI_COLUMNS: tuple[str, ...] = (
    "poi_id", "name", "category", "top_category", "text", "source", "geometry",
)
QUALITY_COLUMNS: tuple[str, ...] = ("weight", "valid_fraction", "norm")
POI_EMBEDDING_COLUMNS: tuple[str, ...] = ("poi_id", "year", "radius_m", *BANDS, *QUALITY_COLUMNS)
#: Rows per Parquet row group of a plain table (what one conversion to Arrow holds).
ROW_GROUP = 65_536



def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The file gets the mode a plain ``open`` would give (0666 less the umask, not
    mkstemp's 0600), and leftovers of earlier writes of the same target that a killed
    process left behind (``.<name>.*.tmp``) are removed once this write has succeeded.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".tmp",
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming(target):
            yield tmp_path
            if tmp_path.is_file():
                os.chmod(tmp_path, 0o666 & ~umask())
            os.replace(tmp_path, target)
            remove_leftovers(target.parent, prefix)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def naming(target: Path) -> Iterator[None]:
    """An OSError inside names ``target``, the file being written, not a temp or scratch
    file of it (or none: Arrow's errors carry no path)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(target)) from e


def remove_leftovers(folder: Path, prefix: str) -> None:
    """Temp files or dirs (``<prefix><pid>-*.tmp``) of one target from writers that died
    before their rename; those of a live process are left alone. Never follows a symlink:
    a link is removed, not its target."""
    for old in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a (Geo)DataFrame to Parquet atomically; GeoDataFrames become GeoParquet.

    A plain DataFrame goes out in row groups of ``ROW_GROUP`` rows, each converted to Arrow
    on its own: a million-row table is never held twice (pandas + Arrow) at once.
    """
    import geopandas as gpd

    with atomic_path(path) as tmp:
        if isinstance(df, gpd.GeoDataFrame) or len(df) == 0:
            df.to_parquet(tmp, index=False)
        else:
            _write_row_groups(df, tmp)
    return Path(path)


def _write_row_groups(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = pa.Table.from_pandas(df.iloc[:ROW_GROUP], preserve_index=False)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_table(first)
        for s in range(ROW_GROUP, len(df), ROW_GROUP):
            writer.write_table(pa.Table.from_pandas(df.iloc[s : s + ROW_GROUP],
                                                    schema=first.schema, preserve_index=False))


def write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                  path: str | os.PathLike[str]) -> int:
    """Write Arrow record batches of ``schema`` as the row groups of a Parquet file,
    atomically, as they come: the table is never whole in memory. Returns the row count."""
    import pyarrow.parquet as pq

    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches:
            writer.write_batch(batch, row_group_size=max(len(batch), 1))
            rows += len(batch)
    return rows


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically (sorted keys, so equal content gives equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Checksum recorded in manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able config: what makes two runs 'the same'."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise TableError naming the missing columns of a table."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(
            f"{what} lacks column(s) {', '.join(missing[:5])}",
            "re-create it with `aether extract`",
        )


def read_table(path: str | os.PathLike[str], columns: Sequence[str], what: str) -> pd.DataFrame:
    """Read a Parquet table and check its contract; GeoParquet comes back as GeoDataFrame."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"{what} not found at {p}", "run `aether extract` first")
    import pandas as pd
    import pyarrow.parquet as pq

    meta = pq.read_schema(p).metadata or {}
    if b"geo" in meta:
        import geopandas as gpd

        df: pd.DataFrame = gpd.read_parquet(p)
    else:
        df = pd.read_parquet(p)
    require_columns(df, columns, what)
    if len(df) == 0:
        raise TableError(f"{what} at {p} is empty", "re-run the step that writes it")
    return df


def poi_embeddings_frame(
    poi_ids: Sequence[str] | pa.Array,
    year: int,
    radius_m: float | np.ndarray,
    mean: np.ndarray,
    weight: np.ndarray,
    valid_fraction: np.ndarray,
    norm: np.ndarray,
) -> pd.DataFrame:
    """Rows of the poi_embeddings contract for one year (one radius, or one per row).

    The band columns are ``mean`` itself (no copy): callers hand over a fresh array. The
    ids may be an Arrow string array, kept as the column's storage (no Python strings).
    """
    import pandas as pd
    import pyarrow as pa

    df = pd.DataFrame(np.asarray(mean, dtype=np.float32), columns=list(BANDS), copy=False)
    ids = poi_ids if isinstance(poi_ids, pa.Array) else pa.array(list(poi_ids), pa.string())
    df.insert(0, "poi_id", pd.Series(pd.arrays.ArrowStringArray(ids.cast(pa.large_string()))))
    df.insert(1, "year", np.int32(year))
    df.insert(2, "radius_m", np.float32(radius_m))
    df["weight"] = np.asarray(weight, dtype=np.float32)
    df["valid_fraction"] = np.asarray(valid_fraction, dtype=np.float32)
    df["norm"] = np.asarray(norm, dtype=np.float32)
    return df


def poi_embeddings_schema() -> pa.Schema:
    """The Arrow schema of the poi_embeddings table (with the pandas metadata a table
    written from ``poi_embeddings_frame`` carries, so both ways give the same file)."""
    import pyarrow as pa

    empty = poi_embeddings_frame([], 0, np.zeros(0, np.float32), np.zeros((0, len(BANDS))),
                                 *(np.zeros(0) for _ in range(3)))
    return pa.Schema.from_pandas(empty, preserve_index=False)


def sorted_poi_ids(poi_id: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """The ids in the canonical order (a stable sort, as ``sort_poi_embeddings``) as an
    Arrow array, and each POI's position in it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array(poi_id.astype(str), pa.large_string())
    order = pc.sort_indices(ids).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return ids.take(pa.array(order)), rank


def sort_poi_embeddings(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order, so equal results give byte-equal files whatever the source.

    A table already in that order (what ``point_means_table`` makes) is returned as is:
    sorting a million rows would copy all of them.
    """
    import pandas as pd

    if _in_canonical_order(df):
        return df if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 \
            and df.index.step == 1 else df.reset_index(drop=True)
    return df.sort_values(["radius_m", "poi_id"], kind="stable").reset_index(drop=True)


def _in_canonical_order(df: pd.DataFrame) -> bool:
    """True when rows go by radius_m, then poi_id (Arrow comparisons: no Python strings)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(df) < 2:
        return True
    r = df["radius_m"].to_numpy()
    if np.isnan(r).any() or df["poi_id"].isna().any() or not (r[1:] >= r[:-1]).all():
        return False
    ids = pa.array(df["poi_id"].astype(str), pa.large_string())
    later = pc.greater_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return bool((later | (r[1:] != r[:-1])).all())
