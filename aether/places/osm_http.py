"""How aether talks to Nominatim and Overpass through osmnx: endpoints, cache, polite retries.

osmnx's own HTTP, caching and parsing code does the work; this module only configures it
for the duration of a call (``osmnx_session``) and adds a requests response hook that
retries what overloaded servers really answer (429 with ``Retry-After``, 504, and
Overpass's 200 with ``"remark": "runtime error: Query timed out ..."``) with back-off, then
ends in one clear error line. Without the hook osmnx would sleep 55 s and retry forever on
429/504, and would silently keep a timed-out (partial) Overpass answer.

Endpoints and cache come from ``AETHER_NOMINATIM_URL``, ``AETHER_OVERPASS_URL`` and
``AETHER_OSM_CACHE`` (default ``<data dir>/osm-cache``), so a CLI run in a subprocess can be
pointed at a loopback stand-in.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from aether.errors import AetherError

RETRIES = 4  # attempts after the first one
BACKOFF_S = 1.0  # first wait without Retry-After, doubling per attempt (AETHER_OSM_BACKOFF_S)
MAX_WAIT_S = 120.0  # never wait longer than this for one retry, whatever Retry-After says
RETRY_STATUS = frozenset({429, 502, 503, 504})


def _failure(response: Any) -> str | None:
    """Why a response must be retried, or None when it is usable."""
    if response.status_code in RETRY_STATUS:
        return f"HTTP {response.status_code} {response.reason}"
    if response.ok and b'"remark"' in response.content:
        try:
            remark = str(json.loads(response.content).get("remark", ""))
        except (ValueError, AttributeError):
            return None
        if "runtime error" in remark:
            return remark.splitlines()[0][:160]
    return None


def _wait_s(response: Any, attempt: int) -> float:
    """Retry-After when the server sends one (seconds form), else exponential back-off."""
    header = response.headers.get("Retry-After", "")
    backoff = float(os.environ.get("AETHER_OSM_BACKOFF_S") or BACKOFF_S)
    wait = float(header) if header.strip().isdigit() else backoff * 2**attempt
    return min(wait, MAX_WAIT_S)


def retry_hook(error: type[AetherError], service: str) -> Callable[..., Any]:
    """A requests response hook that re-sends failed requests politely, then raises ``error``."""
    import requests

    def hook(response: Any, *args: Any, **kwargs: Any) -> Any:
        why = _failure(response)
        if why is None:
            return response
        request = response.request.copy()
        request.hooks = {"response": []}  # the retries below must not recurse into this hook
        send = {k: v for k, v in kwargs.items()
                if k in ("timeout", "verify", "proxies", "stream", "cert")}
        with requests.Session() as session:
            for attempt in range(RETRIES):
                time.sleep(_wait_s(response, attempt))
                response = session.send(request, **send)
                why = _failure(response)
                if why is None:
                    return response
        raise error(f"{service} failed {RETRIES + 1} times: {why}",
                    "the server is overloaded; try again later, or use --pois pbf:FILE")

    return hook


@contextlib.contextmanager
def osmnx_session(error: type[AetherError], service: str) -> Iterator[Any]:
    """osmnx configured for one call (endpoints, cache, retry hook); settings restored after."""
    import osmnx as ox

    from aether.settings import data_dir

    names = ("nominatim_url", "overpass_url", "cache_folder", "use_cache", "requests_kwargs")
    saved = {n: getattr(ox.settings, n) for n in names}
    try:
        if os.environ.get("AETHER_NOMINATIM_URL"):
            ox.settings.nominatim_url = os.environ["AETHER_NOMINATIM_URL"]
        if os.environ.get("AETHER_OVERPASS_URL"):
            ox.settings.overpass_url = os.environ["AETHER_OVERPASS_URL"]
        ox.settings.cache_folder = os.environ.get("AETHER_OSM_CACHE") or str(
            data_dir() / "osm-cache")
        ox.settings.use_cache = True
        hooks = {"response": [retry_hook(error, service)]}
        ox.settings.requests_kwargs = {**saved["requests_kwargs"], "hooks": hooks}
        yield ox
    except OSError as e:  # connection refused, DNS, read timeouts (requests' errors are OSErrors)
        raise error(f"{service} cannot be reached: {str(e)[:160]}",
                    "check the network, or use --pois pbf:FILE / --bbox offline") from e
    finally:
        for n, v in saved.items():
            setattr(ox.settings, n, v)
