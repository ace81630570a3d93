"""Where Earth Engine Export tasks write and how their tables come back: destinations
(Cloud Storage, Drive) and the task book that lets any run adopt a task instead of starting
it twice (``embeddings.earthengine.source`` starts and polls the tasks)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from aether.core import aef
from aether.errors import EarthEngineError, InputError
from aether.io.store import file_lock
from aether.io.tables import read_json, write_json

log = logging.getLogger(__name__)

#: The band holding 1 where the embedding has data (masked like it): its sum is the weight.
VALID_BAND = "valid"


@dataclass(frozen=True)
class ExportTarget:
    """Where Export tasks write (``gcs://bucket/prefix`` or ``drive://folder[/prefix]``) and
    where the same files are read back through fsspec (``read_root``).

    In Cloud Storage a ``/`` in an object name is a path: batch files go to
    ``prefix/<key>.csv``. Drive has no paths: ``folder`` is a literal folder name and
    ``fileNamePrefix`` a file name, so batch files are ``<prefix>_<key>.csv`` in that folder.
    """

    kind: str  # "gcs" | "drive"
    place: str  # bucket or folder
    prefix: str
    read_root: str

    def prefix_for(self, key: str) -> str:
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if self.kind == "gcs" else f"{self.prefix}_{key}"

    def task_config(self, collection: Any, description: str, prefix: str) -> dict[str, Any]:
        import ee

        selectors = ["poi_id", "radius_m", *aef.BANDS, VALID_BAND]
        if self.kind == "gcs":
            task = ee.batch.Export.table.toCloudStorage(
                collection=collection, description=description, bucket=self.place,
                fileNamePrefix=prefix, fileFormat="CSV", selectors=selectors)
        else:
            task = ee.batch.Export.table.toDrive(
                collection=collection, description=description, folder=self.place,
                fileNamePrefix=prefix, fileFormat="CSV", selectors=selectors)
        return cast(dict[str, Any], task.config)

    def url(self, prefix: str) -> str:
        return f"{self.read_root.rstrip('/')}/{prefix}.csv"

    def check_writable(self) -> None:
        """Write and remove a probe file, before any task starts."""
        import fsspec

        probe = f"{self.read_root.rstrip('/')}/{self.prefix_for('.aether-write-probe')}"
        try:
            fs, path = fsspec.core.url_to_fs(probe)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(b"ok")
            fs.rm(path)
        except Exception as e:
            raise EarthEngineError(
                f"export destination {self.kind}://{self.place}/{self.prefix} cannot be "
                f"written ({type(e).__name__}: {e})".replace("\n", " "),
                "check the bucket or folder and its permissions, or drop --export",
            ) from None

    def read(self, prefix: str, wait_s: float = 0.0) -> pd.DataFrame:
        """The exported table, waiting up to ``wait_s`` for it to appear and parse: a Drive
        folder synced to this machine lags the task's SUCCEEDED by seconds to minutes."""
        import fsspec

        url, t0, pause = self.url(prefix), time.monotonic(), 0.5
        while True:
            try:
                with fsspec.open(url, "rb") as f:  # ids like "007" stay strings
                    return pd.read_csv(f, dtype={"poi_id": str})
            except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
                waited = time.monotonic() - t0
                if waited >= wait_s:
                    raise EarthEngineError(
                        f"the export task SUCCEEDED but {url} is not readable after "
                        f"{waited:.0f} s ({type(e).__name__})",
                        "check that --export-read is where the destination syncs to, or "
                        "raise --ee-export-wait; re-running never redoes the task") from None
                log.info("waiting for %s (%.0f s of %.0f s): a synced folder lags the task",
                         url, waited, wait_s)
                time.sleep(min(pause, max(0.0, wait_s - waited)))
                pause = min(2 * pause, 10.0)


def parse_export(spec: str, read_root: str | None) -> ExportTarget:
    """``gcs://bucket/prefix`` or ``drive://folder[/file_prefix]``; ``read_root`` maps it to
    fsspec."""
    kind, sep, rest = spec.partition("://")
    kind = {"gs": "gcs"}.get(kind, kind)
    place, _, prefix = rest.partition("/")
    if not sep or kind not in ("gcs", "drive") or not place:
        raise InputError(f"export destination {spec!r} is not understood",
                         "use gcs://BUCKET/PREFIX or drive://FOLDER")
    if kind == "drive" and "/" in prefix.strip("/"):
        raise InputError(f"Drive export {spec!r} nests folders, which Drive exports cannot",
                         "use drive://FOLDER or drive://FOLDER/FILE_PREFIX (one level)")
    if read_root is None:
        if kind == "drive":
            raise InputError("Drive exports cannot be read back directly",
                             "pass --export-read with a synced folder or fsspec URL")
        read_root = f"gs://{place}"
    return ExportTarget(kind, place, prefix.strip("/"), read_root)


class TaskBook:
    """Export task ids per batch, in a JSON file shared by every run on this workdir: read
    from disk at each look-up and changed under a file lock, so two processes on one workdir
    (a run, and a killed run's task still running on a Dask worker) see each other's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        return cast(dict[str, dict[str, Any]], read_json(self.path)) if self.path.is_file() \
            else {}

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._read().get(key)

    def put(self, key: str, rec: dict[str, Any]) -> None:
        with self._lock, file_lock(self.path):
            data = self._read()
            data[key] = rec
            write_json(data, self.path)
