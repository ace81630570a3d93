"""How aether talks to Nominatim and Overpass through osmnx: endpoints, cache, polite retries.

osmnx's own HTTP, caching and parsing code does the work; this module only configures it
for the duration of a call (``osmnx_session``) and adds a requests response hook that
retries what overloaded servers really answer (429 with ``Retry-After``, 504, and
Overpass's 200 with ``"remark": "runtime error: Query timed out ..."``) with back-off, then
ends in one clear error line. Without the hook osmnx would sleep 55 s and retry forever on
429/504, and would silently keep a timed-out (partial) Overpass answer.

Endpoints and cache come from the settings (``AETHER_NOMINATIM_URL``, ``AETHER_OVERPASS_URL``,
``AETHER_OSM_CACHE``, default ``<data dir>/osm-cache``), so a CLI run in a subprocess can be
pointed at a loopback stand-in. Retries go through tenacity, each logged at debug level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from aether.errors import AetherError

log = logging.getLogger(__name__)

RETRIES = 4  # attempts after the first one
MAX_WAIT_S = 120.0  # never wait longer than this for one retry, whatever Retry-After says
RETRY_STATUS = frozenset({429, 502, 503, 504})
#: What to use instead of each service when the network is down.
OFFLINE_HINTS = {
    "Nominatim": "use --offline (the sample city), or --bbox W,S,E,N / --boundary FILE "
                 "instead of a name",
    "Overpass": "use --pois pbf:FILE (an OSM extract) or --pois FILE (your POIs)",
}
_reachable: dict[tuple[str, int], bool] = {}


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
    from aether.settings import current

    header = response.headers.get("Retry-After", "")
    wait = float(header) if header.strip().isdigit() else current().osm_backoff_s * 2**attempt
    return min(wait, MAX_WAIT_S)


def retry_hook(error: type[AetherError], service: str) -> Callable[..., Any]:
    """A requests response hook that re-sends failed requests politely, then raises ``error``."""
    import requests
    import tenacity

    def hook(response: Any, *args: Any, **kwargs: Any) -> Any:
        if _failure(response) is None:
            return response
        request = response.request.copy()
        request.hooks = {"response": []}  # the retries below must not recurse into this hook
        send = {k: v for k, v in kwargs.items()
                if k in ("timeout", "verify", "proxies", "stream", "cert")}
        given = [response]  # attempt 1 is the answer the hook was given

        def attempt() -> Any:
            # (not `or`: a failed requests.Response is falsy)
            return given.pop() if given else session.send(request, **send)

        def wait(state: tenacity.RetryCallState) -> float:
            assert state.outcome is not None
            return _wait_s(state.outcome.result(), state.attempt_number - 1)

        def give_up(state: tenacity.RetryCallState) -> Any:
            assert state.outcome is not None
            why = _failure(state.outcome.result())
            raise error(f"{service} failed {RETRIES + 1} times: {why}",
                        "the server is overloaded; try again later, or use --pois pbf:FILE")

        with requests.Session() as session:
            return tenacity.Retrying(
                stop=tenacity.stop_after_attempt(RETRIES + 1), wait=wait,
                retry=tenacity.retry_if_result(lambda r: _failure(r) is not None),
                before_sleep=lambda s: log.debug(
                    "%s: %s, retry %d of %d", service,
                    _failure(s.outcome.result()) if s.outcome else "?", s.attempt_number,
                    RETRIES),
                retry_error_callback=give_up, sleep=time.sleep,
            )(attempt)

    return hook


def reachable(url: str, timeout_s: float) -> bool:
    """Whether a TCP connection to ``url``'s host opens (asked once per host and process)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    key = (host, parts.port or (443 if parts.scheme == "https" else 80))
    if key not in _reachable:
        try:
            socket.create_connection(key, timeout=timeout_s).close()
            _reachable[key] = True
        except OSError as e:
            log.debug("%s:%d is unreachable: %s", *key, e)
            _reachable[key] = False
    return _reachable[key]


@contextlib.contextmanager
def osmnx_session(error: type[AetherError], service: str) -> Iterator[Any]:
    """osmnx configured for one call (endpoints, cache, retry hook); settings restored after.

    When the service's host cannot be reached, osmnx still answers from its cache, but does
    not wait a minute for Overpass's status page; a request that must go out fails at once
    with a hint that fits the service.
    """
    import osmnx as ox

    from aether.settings import current

    settings = current()
    names = ("nominatim_url", "overpass_url", "cache_folder", "use_cache", "requests_kwargs",
             "overpass_rate_limit")
    saved = {n: getattr(ox.settings, n) for n in names}
    url, online = "", True
    try:
        if settings.nominatim_url:
            ox.settings.nominatim_url = settings.nominatim_url
        if settings.overpass_url:
            ox.settings.overpass_url = settings.overpass_url
        url = ox.settings.overpass_url if service == "Overpass" else ox.settings.nominatim_url
        online = reachable(url, settings.network_timeout_s)
        if not online:
            ox.settings.overpass_rate_limit = False  # no status page to ask: no 60 s pause
        ox.settings.cache_folder = str(settings.osm_cache_dir)
        ox.settings.use_cache = True
        hooks = {"response": [retry_hook(error, service)]}
        ox.settings.requests_kwargs = {**saved["requests_kwargs"], "hooks": hooks}
        yield ox
    except OSError as e:  # connection refused, DNS, read timeouts (requests' errors are OSErrors)
        host = urlsplit(url).hostname
        if not online:
            raise error(f"{service} ({host}) cannot be reached: no network",
                        OFFLINE_HINTS[service]) from e
        raise error(f"{service} ({host}) stopped answering: {type(e).__name__}",
                    f"check the network and try again, or {OFFLINE_HINTS[service]}") from e
    finally:
        for n, v in saved.items():
            setattr(ox.settings, n, v)
