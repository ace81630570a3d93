"""Every use aether makes of a dependency's private or process-wide API, in one place.

Each private symbol is looked up through ``private()``: a release outside the tested major
versions, or one without the symbol, is a one-line ``DependencyError`` naming both, not an
``AttributeError`` deep in a run. Whatever is changed for aether's use (a patched function,
the ``ee`` client's retry count) is changed only for the duration of that use and then put
back, so a notebook user's own Earth Engine code keeps its behaviour.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aether.errors import DependencyError

#: distribution -> the release series aether is tested with: the major, or major.minor below
#: 1.0, where a minor release may break (pyproject's upper bounds say the same).
TESTED: dict[str, str] = {"earthengine-api": "1", "xee": "0.1", "osmnx": "2"}

#: dotted symbol -> the distribution it belongs to. ``tests/unit/test_compat.py`` resolves
#: every one, so a release that removes one fails a test that names it.
PRIVATE_SYMBOLS: dict[str, str] = {
    # a catalog fetch from storage.googleapis.com in every ee.Initialize, without timeout
    "ee.deprecation._FetchDataCatalogStac": "earthengine-api",
    # the client's process-global state (its retry count has a setter but no getter)
    "ee._state.get_state": "earthengine-api",
    # the raw Nominatim search behind ox.geocode_to_gdf (all results, to pick polygons)
    "osmnx._nominatim._download_nominatim_element": "osmnx",
}


def _check_version(dist: str) -> None:
    try:
        found = version(dist)
    except PackageNotFoundError:
        raise DependencyError(f"{dist} is not installed",
                              "pip install 'aether[ee]' (or aether[osm])") from None
    series = TESTED[dist]
    if found.split(".")[:series.count(".") + 1] != series.split("."):
        raise DependencyError(f"{dist} {found} is not a tested release (tested: {series}.x)",
                              f"pip install '{dist}<{upper_bound(series)}'")


def upper_bound(series: str) -> str:
    """The first release after a series: ``"1"`` -> ``"2"``, ``"0.1"`` -> ``"0.2"``."""
    *head, last = series.split(".")
    return ".".join([*head, str(int(last) + 1)])


def private(symbol: str) -> Any:
    """The object a dotted name in ``PRIVATE_SYMBOLS`` refers to, version-checked."""
    dist = PRIVATE_SYMBOLS[symbol]
    _check_version(dist)
    module_name, _, attr = symbol.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        raise DependencyError(f"{dist} {version(dist)} has no {symbol}",
                              f"pip install '{dist}<{upper_bound(TESTED[dist])}' or update "
                              "aether") from None


@contextlib.contextmanager
def no_catalog_fetch() -> Iterator[None]:
    """Skip ee's deprecated-asset catalog fetch for the duration (an ``ee.Initialize``).

    The fetch goes to storage.googleapis.com whatever the endpoint, without a timeout, and
    only says which public assets are deprecated: useless against an emulator, and a hang on
    a machine whose DNS stalls. The original function is put back afterwards.
    """
    import ee.deprecation

    original = private("ee.deprecation._FetchDataCatalogStac")
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        yield
    finally:
        ee.deprecation._FetchDataCatalogStac = original


_retries_lock = threading.Lock()
_retries_users = 0
_retries_saved: int | None = None


@contextlib.contextmanager
def ee_retries_off() -> Iterator[None]:
    """``ee.data.setMaxRetries(0)`` while aether's requests run (its own retries are counted,
    bounded and jittered); the user's value is restored when the last concurrent user exits.

    Reference-counted: batches run on several threads, and ``ee``'s state is process-wide.
    """
    global _retries_users, _retries_saved
    import ee

    get_state = private("ee._state.get_state")
    with _retries_lock:
        if _retries_users == 0:
            _retries_saved = int(get_state().max_retries)
            ee.data.setMaxRetries(0)
        _retries_users += 1
    try:
        yield
    finally:
        with _retries_lock:
            _retries_users -= 1
            if _retries_users == 0 and _retries_saved is not None:
                ee.data.setMaxRetries(_retries_saved)
                _retries_saved = None


@contextlib.contextmanager
def retries_kept() -> Iterator[None]:
    """Keep the ``ee`` client's retry count across an ``ee.Reset()`` + ``ee.Initialize``
    (a reset forgets it, and it may be a notebook user's own choice)."""
    import ee

    get_state = private("ee._state.get_state")
    saved = int(get_state().max_retries)
    try:
        yield
    finally:
        ee.data.setMaxRetries(saved)


def nominatim_search(query: str, limit: int) -> list[dict[str, Any]]:
    """Every Nominatim result for ``query`` through osmnx (its cache, its rate limiting)."""
    search = private("osmnx._nominatim._download_nominatim_element")
    return list(search(query, limit=limit))
