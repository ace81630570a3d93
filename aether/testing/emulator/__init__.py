"""A local Earth Engine REST emulator over AlphaEarth-format tiles (tests and offline runs).

The genuine ``earthengine-api`` client talks to it unchanged, apart from the one documented
patch ``ee.deprecation._FetchDataCatalogStac = lambda: {}`` (a hard-coded catalog fetch).

Usage
-----
In-process (no socket; unit tests)::

    from aether.testing.emulator import Emulator, Faults, connect
    emu = Emulator(tiles="path/to/tiles", exports=tmp_path / "exports")
    connect(emu)                      # ee.Initialize(http_transport=..., project="demo-project")
    # ... use ee normally; emu.log lists every request (route, status, fault, ms) ...
    # ee.Reset() afterwards (the pytest fixture ``ee_emulator`` does both).

Loopback server (subprocess / CLI tests, dask workers); it refuses a browser ``Origin``, a
``Host`` other than ``127.0.0.1:PORT``/``localhost:PORT`` and non-JSON POSTs::

    aether emulator serve --tiles DIR --exports DIR --port 0     # prints http://127.0.0.1:PORT
    # client: ee.Initialize(credentials=None, url=URL, project="demo-project")
    # in Python: ``with running(emu) as url: ...``; GET URL/_emulator/log returns the log.

Faults (``Faults`` / CLI ``--fault-*`` options) hit only the compute routes (value:compute,
table:computeFeatures, image:computePixels, table:export), by seeded ``rate`` over ``kinds``
or by ``schedule`` {request number: kind}:

    quota         429 RESOURCE_EXHAUSTED   (the client retries 429/5xx itself with backoff;
    internal      500 INTERNAL              ``ee.data.setMaxRetries(0)`` shows them directly)
    unavailable   503 UNAVAILABLE
    timeout       400 "Computation timed out."          -> ee.EEException
    memory        400 "User memory limit exceeded."      -> ee.EEException
    aggregations  400 "Too many concurrent aggregations." -> ee.EEException
    ee_memory     400 "Earth Engine memory capacity exceeded."
    capacity      400 "Earth Engine capacity exceeded."
    payload       400 "Request payload size exceeds the limit: 10485760 bytes."
    request_size  400 "Total request size (N bytes) must be less than or equal to 50331648 bytes."
    deadline      504 "Deadline expired before operation could complete." (retried by the client)
    drop          socket closed without answer -> ConnectionError in the client
    export_failed table:export starts, then its operation ends FAILED (error.message set)

``latency`` (seconds) is added to every compute request. ``server_time`` (CLI
``--server-time``, seconds per EECU-second; 0 by default: off) models Earth Engine's server
time as time instead of local CPU: value:compute and computeFeatures answers are computed
once, kept by request body, and each arrives ``latency + server_time × EECU`` after its
request (EECU from the emulator's meter, ``reduce.metered``: a price per feature and per
band-pixel), so requests in flight overlap as on Google's servers; the log adds ``eecu``,
``server_ms``, ``cached``, ``cpu_ms`` (a computed answer's thread CPU) and ``late_ms`` (a
computation that overran its modelled time). ``in_flight(log)`` gives the peak and a
timeline (mean per step) of requests in flight. ``export_delay`` keeps an export
RUNNING that long (to poll or cancel it). Exports land, confined, in
``<exports>/gcs/<bucket>/<prefix>.csv`` or ``<exports>/drive/<folder>/<prefix>.csv`` (Drive
names literal, see ``exports.py``; ``.geojson`` for GeoJSON; ``selectors`` honoured); the
operation's ``metadata.destinationUris`` holds the local ``file://`` URI. A ``requestId`` seen
before returns the same operation, or 409 ALREADY_EXISTS with
``duplicate_request_id="error"``. ``toAsset`` keeps the table in memory for
``ee.FeatureCollection(asset_id)``. ``denied_projects`` (CLI ``--deny-project``) answers 403
PERMISSION_DENIED "Project ... is not registered to use Earth Engine." for those projects.

Semantics (independent of aether's own code): buffers are EE's inscribed polygons
(``geometry.py``), ``Reducer.mean``/``sum`` weigh pixels by 8-bit coverage with EE's 0.5%
rule, ``unweighted()`` by pixel centres (``coverage.py``); tiles are decoded by the emulator
itself; ``mosaic()`` puts the last image on top and has EE's default projection (EPSG:4326,
1°) unless ``crs`` is given; a mean over no valid pixel is left out of reduceRegions'
properties (null in reduceRegion), a sum is 0. getInfo of a collection over 5,000 elements
and computePixels answers over 48 MiB (value bytes + 1 mask byte per band-pixel, by pixel
type) are refused as EE refuses them; computePixels answers NPY or GEO_TIFF; computeFeatures
pages with pageSize/pageToken (at most ``max_page_size`` = 1000 per page). Algorithms: see
``algorithms.py`` (an unsupported one answers 400 "Emulator: unsupported algorithm 'X'").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from threading import Thread

from aether.testing.emulator.faults import ALL_KINDS, Faults
from aether.testing.emulator.server import Emulator, InProcessTransport, in_flight, serve

__all__ = ["ALL_KINDS", "Emulator", "Faults", "InProcessTransport", "connect", "in_flight",
           "running", "serve"]

DEMO_PROJECT = "demo-project"


def connect(emulator: Emulator, project: str = DEMO_PROJECT) -> None:
    """Initialise the genuine ``ee`` client against ``emulator`` in-process."""
    import ee

    ee.deprecation._FetchDataCatalogStac = lambda: {}
    ee.Initialize(credentials=None, url="http://emulator.invalid", project=project,
                  http_transport=InProcessTransport(emulator))


@contextmanager
def running(emulator: Emulator, port: int = 0) -> Iterator[str]:
    """Serve ``emulator`` on 127.0.0.1 in a background thread; yields its URL."""
    server = serve(emulator, port)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
