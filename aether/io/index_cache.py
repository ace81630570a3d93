"""A remote AEF index, downloaded once and revalidated by ETag / Last-Modified.

The public index is tens of MB; every run asks the server only "has it changed?"
(``If-None-Match`` / ``If-Modified-Since``) and reads the cached copy on ``304``. When the
server cannot be reached, a cached copy is used (with a warning) rather than failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
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


def cached_index(url: str, cache: Path) -> Path:
    """A local copy of the index at ``url``, fresh as of this call."""
    key = hashlib.sha256(url.encode()).hexdigest()[:20]
    body, meta_path = cache / f"{key}.parquet", cache / f"{key}.json"
    meta: dict[str, str] = {}
    if body.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
    headers = {"User-Agent": USER_AGENT}
    if meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=TIMEOUT_S) as resp:
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(body) as tmp, open(tmp, "wb") as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
            new = {"url": url, "etag": resp.headers.get("ETag") or "",
                   "last_modified": resp.headers.get("Last-Modified") or ""}
            with atomic_path(meta_path) as tmp:
                Path(tmp).write_text(json.dumps(new))
            log.info("downloaded the AEF index %s (%d bytes)", url, body.stat().st_size)
            return body
    except urllib.error.HTTPError as e:
        if e.code == 304 and meta:
            log.info("AEF index %s unchanged (HTTP 304): using the cached copy", url)
            return body
        raise TilesError(f"the AEF index {url} answered HTTP {e.code} {_one_line(e.reason)}",
                         "check the --tiles URL (a directory URL must hold aef_index.parquet)"
                         ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = _one_line(getattr(e, "reason", e))
        if meta:
            log.warning("cannot reach %s (%s): using the cached index from %s", url, reason,
                        time.ctime(body.stat().st_mtime))
            return body
        raise TilesError(f"cannot reach the AEF index {url} ({reason})",
                         "check the network or the server, or point --tiles at a local copy"
                         ) from None
