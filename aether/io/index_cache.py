"""A remote AEF index, downloaded once and revalidated by ETag / Last-Modified.

The public index is tens of MB; every run asks the server only "has it changed?"
(``If-None-Match`` / ``If-Modified-Since``) and reads the cached copy on ``304``. When the
server cannot be reached, a cached copy is used (with a warning) rather than failing. A
download is checked before it is cached (length and Parquet magic), so a transfer cut short
never poisons later runs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from aether.errors import TilesError
from aether.io.tables import atomic_path

#: What aether's HTTP requests (the index here, tiles through GDAL) call themselves.
USER_AGENT = "aether (AlphaEarth POI embeddings)"

log = logging.getLogger(__name__)

#: Seconds to wait for the index server before giving up (or falling back to the cache).
TIMEOUT_S = 30.0
_CHUNK = 1 << 20


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _paths(url: str, cache: Path) -> tuple[Path, Path]:
    """The cached body and its metadata (ETag, Last-Modified) of ``url``."""
    key = hashlib.sha256(url.encode()).hexdigest()[:20]
    return cache / f"{key}.parquet", cache / f"{key}.json"


def cached_copy(url: str, cache: Path) -> Path | None:
    """The copy ``cached_index`` last made of ``url``, without asking the server (None:
    none yet)."""
    body, _ = _paths(url, cache)
    return body if body.is_file() else None


def cached_index(url: str, cache: Path) -> Path:
    """A local copy of the index at ``url``, fresh as of this call.

    Only a complete Parquet file is ever cached: the body is written to a temporary name,
    and renamed into place only when its length is the ``Content-Length`` the server
    announced and it starts and ends with Parquet's magic bytes (a transfer cut short fails
    one of these). A cached copy that fails the same check (left by an older aether, or
    damaged on disk) is deleted with its ETag and the index is fetched again in full.
    """
    body, meta_path = _paths(url, cache)
    meta = _cached_meta(body, meta_path, url)
    headers = {"User-Agent": USER_AGENT}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TIMEOUT_S) as resp:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(body) as tmp:
                size = 0
                with open(tmp, "wb") as f:
                    while chunk := resp.read(_CHUNK):
                        f.write(chunk)
                        size += len(chunk)
                problem = _incomplete(tmp, size, resp.headers.get("Content-Length"))
                if problem:
                    raise TilesError(f"the AEF index from {url} is incomplete ({problem}); "
                                     "nothing was cached",
                                     "run again: the download restarts from the beginning")
            new = {"url": url, "etag": resp.headers.get("ETag") or "",
                   "last_modified": resp.headers.get("Last-Modified") or ""}
            with atomic_path(meta_path) as tmp:
                Path(tmp).write_text(json.dumps(new))
            log.info("downloaded the AEF index %s (%d bytes)", url, size)
            return body
    except urllib.error.HTTPError as e:
        if e.code == 304 and meta:
            log.info("AEF index %s unchanged (HTTP 304): using the cached copy", url)
            return body
        raise TilesError(f"the AEF index {url} answered HTTP {e.code} {_one_line(e.reason)}",
                         "check the --tiles URL (a directory URL must hold aef_index.parquet)"
                         ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        # HTTPException: IncompleteRead when the connection closes before Content-Length
        reason = _one_line(getattr(e, "reason", None) or repr(e))[:160]
        if meta:
            log.warning("cannot reach %s (%s): using the cached index from %s", url, reason,
                        time.ctime(body.stat().st_mtime))
            return body
        raise TilesError(f"cannot reach the AEF index {url} ({reason}); nothing was cached",
                         "check the network or the server, or point --tiles at a local copy"
                         ) from None


#: Parquet files begin and end with these four bytes.
PARQUET_MAGIC = b"PAR1"


def _incomplete(path: Path, size: int, content_length: str | None) -> str | None:
    """Why ``path`` (``size`` bytes) is not a whole Parquet file, or None when it is."""
    if content_length is not None and content_length.strip().isdigit() \
            and int(content_length) != size:
        return f"{size:,} of {int(content_length):,} bytes"
    if size < 2 * len(PARQUET_MAGIC) + 4:
        return f"{size:,} bytes, too short for Parquet"
    with open(path, "rb") as f:
        head = f.read(len(PARQUET_MAGIC))
        f.seek(-len(PARQUET_MAGIC), os.SEEK_END)
        tail = f.read(len(PARQUET_MAGIC))
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        return "no Parquet magic bytes at its start and end"
    return None


def _cached_meta(body: Path, meta_path: Path, url: str) -> dict[str, str]:
    """The cached copy's ETag / Last-Modified when the copy is whole; a copy that is not
    (cut short, damaged) is deleted with its metadata, so it is fetched again in full."""
    if not (body.is_file() and meta_path.is_file()):
        return {}
    try:
        meta = json.loads(meta_path.read_text())
        problem = _incomplete(body, body.stat().st_size, None)
    except (OSError, ValueError):
        meta, problem = None, "unreadable"
    if isinstance(meta, dict) and problem is None:
        return {k: str(v) for k, v in meta.items()}
    log.warning("the cached AEF index %s for %s is damaged (%s): deleting it and downloading "
                "again", body, url, problem or "bad metadata")
    for stale in (meta_path, body):
        try:
            stale.unlink(missing_ok=True)
        except OSError as e:
            raise TilesError(f"the cached AEF index {body} is damaged and cannot be deleted "
                             f"({e.strerror})", f"delete {body} and {meta_path}") from None
    return {}
