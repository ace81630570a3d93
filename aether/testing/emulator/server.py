"""The REST surface: routes, limits, export operations, and the two ways in.

``Emulator.handle(method, path, query, body)`` answers one request; ``InProcessTransport``
plugs it into ``ee.Initialize(http_transport=...)`` and ``serve()`` puts it behind a
``ThreadingHTTPServer`` on 127.0.0.1. Errors are shaped as Earth Engine shapes them:
``{"error": {"code", "message", "status"}}``, 400 INVALID_ARGUMENT for user errors, which the
client raises as ``ee.EEException(message)``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import re
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from aether.errors import InputError
from aether.testing.emulator import algorithms  # noqa: F401  (registers the algorithms)
from aether.testing.emulator.exports import destination, extension, open_confined
from aether.testing.emulator.faults import KINDS, Faults, fault_message
from aether.testing.emulator.graph import evaluate
from aether.testing.emulator.raster import Catalog
from aether.testing.emulator.reduce import metered
from aether.testing.emulator.values import PIXEL_TYPES, Coll, EEError, Grid, Img, to_json

#: EE refuses to getInfo collections larger than this.
MAX_GETINFO_ELEMENTS = 5000
#: EE's cap on one computePixels answer, counted as (bytes per value + 1 mask byte) per
#: band-pixel of the output's pixel types.
MAX_PIXEL_BYTES = 48 * 2**20
#: computeFeatures page size when the request gives none, and the most it may ask for.
DEFAULT_PAGE_SIZE = 1000
OPERATION_TYPE = "type.googleapis.com/google.earthengine.v1.OperationMetadata"
DUPLICATE_MODES = ("operation", "error")
COMPUTE_ROUTES = ("value:compute", "table:computeFeatures", "image:computePixels", "table:export")
#: The routes whose answers ``server_time`` models (the synchronous region reductions).
MODELLED_ROUTES = ("value:compute", "table:computeFeatures")

_ROUTE = re.compile(r"^/v1(?:alpha|beta)?/projects/(?P<project>[^/]+)/(?P<rest>.+)$")


class Dropped(Exception):
    """The connection is to be closed without an answer (fault ``drop``)."""


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode())


#: Google APIs' limit on a request's payload (10 MiB): a larger body is refused unread.
MAX_BODY_BYTES = 10 * 1024 * 1024


def error_reply(status: int, message: str, ee_status: str = "INVALID_ARGUMENT") -> Reply:
    return _json(status, {"error": {"code": status, "message": message, "status": ee_status}})


def _ee_dir() -> Path:
    import ee

    return Path(ee.__file__).parent


class Emulator:
    """An Earth Engine REST endpoint over local AlphaEarth tiles.

    ``tiles``: an AEF tile directory or index (``io.tiles.read_index``); ``exports``: the folder
    standing in for Cloud Storage / Drive; ``faults``: what to inject; ``export_delay``:
    seconds an export stays RUNNING before it writes (room to poll and cancel);
    ``denied_projects``: project ids answered 403 PERMISSION_DENIED, as EE answers projects
    not registered for Earth Engine; ``duplicate_request_id``: what a table:export with a
    ``requestId`` seen before gets: ``"operation"`` (the existing operation) or ``"error"``
    (409 ALREADY_EXISTS). Real EE's answer is undocumented; clients must survive both.
    ``memory_features``: a ``reduceRegions`` over more features than this × its
    ``tileScale`` fails with "User memory limit exceeded." — deterministically, as EE's does:
    the same request fails again, only a larger ``tileScale`` (or fewer features) passes.
    ``server_time``: seconds of modelled server time per EECU-second of the emulator's meter
    (``reduce.metered``; 0, the default: answer as soon as computed). With it, value:compute
    and computeFeatures answers are computed once and kept by request body, and every answer
    arrives ``latency + server_time × EECU`` after its request, whatever the local CPU did:
    requests in flight overlap as on Google's servers, so a benchmark measures the client.
    """

    def __init__(self, tiles: str | os.PathLike[str] | None = None,
                 exports: str | os.PathLike[str] | None = None, faults: Faults | None = None,
                 export_delay: float = 0.0, max_page_size: int = DEFAULT_PAGE_SIZE,
                 denied_projects: tuple[str, ...] = (),
                 duplicate_request_id: str = "operation",
                 memory_features: int | None = None, server_time: float = 0.0) -> None:
        if server_time < 0:
            raise InputError(f"bad server time {server_time}",
                             "give seconds per EECU-second >= 0 (0: off)")
        if duplicate_request_id not in DUPLICATE_MODES:
            raise InputError(f"unknown duplicate requestId behaviour {duplicate_request_id!r}",
                             f"choose one of {', '.join(DUPLICATE_MODES)}")
        self.catalog = Catalog(tiles)
        self.exports = Path(exports).resolve() if exports else None
        self.duplicate_request_id = duplicate_request_id
        self.faults = faults or Faults()
        self.export_delay = export_delay
        self.max_page_size = max_page_size
        self.denied_projects = set(denied_projects)
        self.memory_features = memory_features
        self.server_time = server_time
        self._answers: dict[str, tuple[Reply, float]] = {}
        self.assets: dict[str, Coll] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self._pages: OrderedDict[str, list[Any]] = OrderedDict()
        self._by_request_id: dict[str, str] = {}
        self._lock = threading.Lock()
        self._discovery: bytes | None = None

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]] | None = None,
               body: bytes = b"") -> Reply:
        """Answer one request; raises ``Dropped`` when the fault is a dropped connection."""
        path = unquote(path)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"method": method, "path": path, "route": "", "fault": None,
                                 "start": time.time()}  # with ms: requests in flight
        try:
            reply = self._dispatch(method, path, query or {}, body, entry)
        except Dropped:
            entry["status"] = 0
            raise
        finally:
            entry["ms"] = round(1000 * (time.perf_counter() - t0), 1)
            with self._lock:
                self.log.append(entry)
        entry["status"] = reply.status
        return reply

    def _dispatch(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
                  entry: dict[str, Any]) -> Reply:
        if path.endswith("/$discovery/rest"):
            return Reply(200, self.discovery())
        if path == "/_emulator/log":
            with self._lock:
                return _json(200, {"requests": list(self.log)})
        m = _ROUTE.match(path)
        if not m:
            return error_reply(404, f"Emulator: no route for {method} {path}", "NOT_FOUND")
        project, rest = m["project"], m["rest"]
        entry["route"] = route = re.sub(r"operations/[^/:]+", "operations/{id}", rest)
        entry["project"] = project
        if project in self.denied_projects:
            return error_reply(403, f"Project 'projects/{project}' is not registered to use "
                               "Earth Engine.", "PERMISSION_DENIED")
        if rest == "algorithms":
            return Reply(200, (_ee_dir() / "tests" / "algorithms.json").read_bytes())
        if route in ("operations/{id}", "operations/{id}:cancel", "operations/{id}:wait"):
            return self._operation(project, rest, method)
        if rest == "operations":
            with self._lock:
                ops = [dict(op) for op in self.operations.values()]
            return _json(200, {"operations": ops})
        if rest not in COMPUTE_ROUTES or method != "POST":
            return error_reply(404, f"Emulator: no route for {method} {path}", "NOT_FOUND")
        fault = self.faults.draw(rest)
        entry["fault"] = fault
        if self.faults.latency:
            time.sleep(self.faults.latency)
        if fault == "drop":
            raise Dropped()
        if fault and fault != "export_failed":
            status, ee_status, _ = KINDS[fault]
            return error_reply(status, fault_message(fault, _request_bytes(rest, body)),
                               ee_status)
        if self.server_time and rest in MODELLED_ROUTES:
            return self._modelled(rest, body, entry)
        return self._compute(project, rest, body, fault, entry)

    def _compute(self, project: str, rest: str, body: bytes, fault: str | None,
                 entry: dict[str, Any]) -> Reply:
        try:
            req = json.loads(body or b"{}")
            if rest == "value:compute":
                return _json(200, {"result": self._get_info(evaluate(req["expression"], self))})
            if rest == "table:computeFeatures":
                return self._compute_features(req)
            if rest == "image:computePixels":
                return self._compute_pixels(req)
            return self._export(project, req, failed=fault == "export_failed")
        except EEError as e:
            return error_reply(400, str(e))
        except (KeyError, json.JSONDecodeError) as e:
            return error_reply(400, f"Invalid JSON payload received. {e}")
        except Exception as e:  # an emulator bug: say so at once (a 5xx would be retried)
            entry["error"] = traceback.format_exc()
            return error_reply(400, f"Emulator internal error: {type(e).__name__}: {e}")

    def _modelled(self, rest: str, body: bytes, entry: dict[str, Any]) -> Reply:
        """The answer ``server_time × EECU`` seconds from now, computed once per request body.

        A miss computes (its thread CPU and EECU go to the log, what calibrates the model)
        and sleeps only what is left of the modelled time; a hit only sleeps. Errors and
        paged answers are neither modelled nor kept.
        """
        t0 = time.perf_counter()
        key = hashlib.sha256(rest.encode() + b"\0" + body).hexdigest()
        with self._lock:
            kept = self._answers.get(key)
        if kept is None:
            cpu0 = time.thread_time()
            with metered() as eecu:
                reply = self._compute("", rest, body, None, entry)
            entry["cpu_ms"] = round(1000 * (time.thread_time() - cpu0), 1)
            if reply.status != 200 or b'"nextPageToken"' in reply.body:
                return reply
            kept = (reply, eecu[0])
            with self._lock:
                self._answers[key] = kept
        reply, eecu_s = kept
        server_s = self.server_time * eecu_s
        entry.update(cached=entry.get("cpu_ms") is None, eecu=round(eecu_s, 6),
                     server_ms=round(1000 * server_s, 1))
        left = server_s - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        elif server_s > 0:  # computing took longer than the model allows
            entry["late_ms"] = round(-1000 * left, 1)
        return reply

    def discovery(self) -> bytes:
        if self._discovery is None:
            text = (_ee_dir() / "tests" / "cloud_api_discovery_document.json").read_text()
            self._discovery = text.replace("v1alpha", "v1").encode()
        return self._discovery

    # --- compute routes ---------------------------------------------------------------

    @staticmethod
    def _get_info(value: Any) -> Any:
        if isinstance(value, Coll) and len(value.items) > MAX_GETINFO_ELEMENTS:
            raise EEError(f"Collection query aborted after accumulating over "
                          f"{MAX_GETINFO_ELEMENTS} elements.")
        return to_json(value)

    def _compute_features(self, req: dict[str, Any]) -> Reply:
        token = req.get("pageToken")
        if token:
            key, _, offset_s = str(token).partition(":")
            with self._lock:
                items = self._pages.get(key)
            if items is None or not offset_s.isdigit():
                raise EEError("Invalid page token.")
            offset = int(offset_s)
        else:
            value = evaluate(req["expression"], self)
            if not isinstance(value, Coll) or value.kind != "FeatureCollection":
                raise EEError("table:computeFeatures: expression is not a FeatureCollection.")
            items, offset = value.items, 0
            key = uuid.uuid4().hex[:16]
        size = int(req.get("pageSize") or self.max_page_size)
        size = max(1, min(size, self.max_page_size))
        page = items[offset : offset + size]
        out: dict[str, Any] = {"type": "FeatureCollection",
                               "features": [to_json(f) for f in page]}
        if offset + size < len(items):
            with self._lock:
                self._pages[key] = items
                self._pages.move_to_end(key)
                while len(self._pages) > 32:
                    self._pages.popitem(last=False)
            out["nextPageToken"] = f"{key}:{offset + size}"
        return _json(200, out)

    def _compute_pixels(self, req: dict[str, Any]) -> Reply:
        img = evaluate(req["expression"], self)
        if not isinstance(img, Img):
            raise EEError("image:computePixels: expression is not an Image.")
        fmt = req.get("fileFormat", "NPY")
        if fmt not in ("NPY", "GEO_TIFF"):
            raise EEError(f"Emulator: computePixels fileFormat {fmt} is not supported "
                          "(NPY or GEO_TIFF).")
        g = req.get("grid") or {}
        if not g and img.native is None:
            raise EEError("image:computePixels: a grid is required for a composite image.")
        dims = g.get("dimensions", {})
        base = img.native
        t = g.get("affineTransform")
        grid = Grid(
            g.get("crsCode") or (base.crs if base else "EPSG:4326"),
            tuple(float(t.get(k, 0.0)) for k in ("scaleX", "shearX", "translateX", "shearY",
                                                 "scaleY", "translateY")) if t else base.transform,  # type: ignore[union-attr,arg-type]
            int(dims.get("width") or base.width),  # type: ignore[union-attr]
            int(dims.get("height") or base.height),  # type: ignore[union-attr]
        )
        bands = req.get("bandIds") or img.bands
        idx = [img.bands.index(b) for b in bands if b in img.bands]
        if len(idx) != len(bands):
            raise EEError(f"image:computePixels: unknown band ids {bands}.")
        all_types = img.band_types()
        dtypes = [np.dtype(PIXEL_TYPES[all_types[i]]) for i in idx]
        size = pixel_bytes(grid.width, grid.height, dtypes)
        if size > MAX_PIXEL_BYTES:
            raise EEError(f"Total request size ({size} bytes) must be less than or equal to "
                          f"{MAX_PIXEL_BYTES} bytes.")
        values = img.read(grid)[..., idx]
        if fmt == "GEO_TIFF":
            return Reply(200, _geotiff(values, grid, bands), "image/tiff")
        out = np.empty((grid.height, grid.width),
                       dtype=[(b, t.newbyteorder("<")) for b, t in zip(bands, dtypes, strict=True)])
        for i, (b, t) in enumerate(zip(bands, dtypes, strict=True)):
            v = values[..., i]
            if t.kind in "iu":  # masked pixels of an integer band carry 0 (no NaN in ints)
                info = np.iinfo(t)
                v = np.clip(np.nan_to_num(v, nan=0.0), info.min, info.max)
            out[b] = v
        buf = io.BytesIO()
        np.save(buf, out)
        return Reply(200, buf.getvalue(), "application/octet-stream")

    # --- exports and operations -------------------------------------------------------

    def _export(self, project: str, req: dict[str, Any], failed: bool) -> Reply:
        rid = req.get("requestId")
        with self._lock:
            known = self._by_request_id.get(rid) if rid else None
            if known and self.duplicate_request_id == "operation":  # idempotent start
                return _json(200, self.operations[known])
        if known:
            return error_reply(409, f"Request ID '{rid}' has already been used: the task "
                               f"'projects/{project}/operations/{known}' exists.",
                               "ALREADY_EXISTS")
        opts = req.get("fileExportOptions")
        asset = (req.get("assetExportOptions") or {}).get("earthEngineDestination")
        if not opts and not asset:
            raise EEError("table:export: fileExportOptions or assetExportOptions is required.")
        if opts and self.exports is None:
            raise EEError("Emulator: start it with an exports folder to export files.")
        # a destination is checked at the start, as EE checks it: refused, nothing runs
        parts = destination(opts, str(req.get("description") or "")) if opts else []
        op_id = base64.b32encode(uuid.uuid4().bytes).decode()[:24]
        now = _now()
        op = {"name": f"projects/{project}/operations/{op_id}", "done": False,
              "metadata": {"@type": OPERATION_TYPE, "state": "PENDING",
                           "description": req.get("description", ""), "type": "EXPORT_FEATURES",
                           "createTime": now, "updateTime": now, "attempt": 1}}
        with self._lock:
            self.operations[op_id] = op
            if rid:
                self._by_request_id[rid] = op_id
        threading.Thread(target=self._run_export, args=(op_id, req, parts, failed),
                         daemon=True).start()
        return _json(200, op)

    def _set(self, op_id: str, **meta: Any) -> bool:
        """Update an operation unless it is already done (a cancel wins over a late write)."""
        with self._lock:
            op = self.operations[op_id]
            if op["done"]:
                return False
            op["metadata"].update(meta, updateTime=_now())
            if meta.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED"):
                op["done"] = True
                op["metadata"]["endTime"] = _now()
            return True

    def _done(self, op_id: str) -> bool:
        with self._lock:
            return bool(self.operations[op_id]["done"])

    def _run_export(self, op_id: str, req: dict[str, Any], parts: list[str], failed: bool
                    ) -> None:
        if not self._set(op_id, state="RUNNING", startTime=_now()):
            return
        time.sleep(self.export_delay)
        try:
            if failed:
                raise EEError(KINDS["export_failed"][2])
            if self._done(op_id):
                return
            with metered() as eecu:
                value = evaluate(req["expression"], self)
            if not isinstance(value, Coll):
                raise EEError("Export.table: expression is not a FeatureCollection.")
            if self._done(op_id):  # cancelled while computing: write nothing
                return
            uris = self._write_export(req, parts, value)
        except EEError as e:
            if self._set(op_id, state="FAILED"):
                with self._lock:
                    self.operations[op_id]["error"] = {"code": 3, "message": str(e)}
            return
        self._set(op_id, state="SUCCEEDED", progress=1.0, destinationUris=uris,
                  batchEecuUsageSeconds=round(eecu[0], 6))

    def _write_export(self, req: dict[str, Any], parts: list[str], value: Coll) -> list[str]:
        asset = (req.get("assetExportOptions") or {}).get("earthEngineDestination")
        if asset:
            with self._lock:
                self.assets[asset["name"]] = value
                self.assets[asset["name"].split("/assets/", 1)[-1]] = value
            return [asset["name"]]
        opts = req["fileExportOptions"]
        assert self.exports is not None
        try:
            path = write_table(value, self.exports, parts, opts.get("fileFormat", "CSV"),
                               req.get("selectors"))
        except OSError as e:
            raise EEError(f"Export failed: cannot write '{'/'.join(parts)}': "
                          f"{e.strerror or e}.") from e
        return [path.as_uri()]

    def _operation(self, project: str, rest: str, method: str) -> Reply:
        op_id, _, verb = rest.split("/", 1)[1].partition(":")
        with self._lock:
            op = self.operations.get(op_id)
        if op is None:
            return error_reply(404, f"Operation {rest} not found.", "NOT_FOUND")
        if verb == "cancel":
            self._set(op_id, state="CANCELLED")
            with self._lock:
                if op["metadata"]["state"] == "CANCELLED":
                    op.setdefault("error", {"code": 1, "message": "Cancelled."})
            return _json(200, {})
        with self._lock:
            return _json(200, json.loads(json.dumps(op)))


def in_flight(log: list[dict[str, Any]], routes: tuple[str, ...] = COMPUTE_ROUTES,
              since: float = 0.0, steps: int = 20) -> dict[str, Any]:
    """Requests in flight over time, from a log's start times and durations.

    ``peak``: the most at once; ``timeline``: the mean number in flight in each of ``steps``
    equal steps from the first start to the last end (``step_s`` long; a mean, not a sample
    at one instant, which would alias with a steady request rhythm); ``requests`` counted:
    those of ``routes`` started at or after ``since`` (a ``time.time()``).
    """
    spans = sorted((e["start"], e["start"] + e["ms"] / 1000) for e in log
                   if e.get("route") in routes and e["start"] >= since and "ms" in e)
    if not spans:
        return {"requests": 0, "peak": 0, "timeline": [], "step_s": 0.0}
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    t0, t1 = spans[0][0], max(b for _, b in spans)
    step = (t1 - t0) / steps
    edges = [t0 + step * i for i in range(steps + 1)] if step > 0 else []
    timeline = [round(sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans) / step, 1)
                for lo, hi in itertools.pairwise(edges)]
    return {"requests": len(spans), "peak": peak, "timeline": timeline,
            "step_s": round(step, 3)}


def _geotiff(values: np.ndarray, grid: Grid, bands: list[str]) -> bytes:
    """A float32 GeoTIFF of (H, W, B) values on ``grid``; NaN marks masked pixels."""
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=grid.width, height=grid.height, count=len(bands),
                      dtype="float32", crs=grid.crs, transform=grid.affine, nodata=np.nan) as ds:
            ds.write(np.moveaxis(values, -1, 0).astype(np.float32))
            ds.descriptions = tuple(bands)
        return mem.read()


def pixel_bytes(width: int, height: int, dtypes: list[np.dtype]) -> int:
    """Bytes EE counts for a computePixels answer: (value bytes + 1 mask byte) per band-pixel."""
    return width * height * sum(t.itemsize + 1 for t in dtypes)


def _request_bytes(route: str, body: bytes) -> int | None:
    """The answer size a computePixels request asks for (for the request_size fault)."""
    if route != "image:computePixels":
        return None
    try:
        req = json.loads(body or b"{}")
        dims = (req.get("grid") or {}).get("dimensions") or {}
        n_bands = len(req.get("bandIds") or [None])  # float bands, as the AEF ones are
        return pixel_bytes(int(dims["width"]), int(dims["height"]), [np.dtype("f4")] * n_bands)
    except (KeyError, TypeError, ValueError):
        return None


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_table(value: Coll, root: Path, parts: list[str], fmt: str,
                selectors: list[str] | None = None) -> Path:
    """Write an exported table as EE does, confined under ``root`` (see ``exports.py``).

    CSV: ``system:index``, the properties, ``.geo``; with ``selectors``, exactly those columns
    in that order (``system:index`` and ``.geo`` only if selected), as Export.table writes.
    GeoJSON: a FeatureCollection, properties limited to ``selectors`` when given.
    """
    import csv

    feats = [to_json(f) for f in value.items]
    if selectors is not None:
        keep = [str(c) for c in selectors]
        for f in feats:
            f["properties"] = {k: f["properties"].get(k) for k in keep
                               if k not in ("system:index", ".geo")}
    with open_confined(root, parts) as (fh, path):
        if extension(fmt) == "geojson":
            fh.write(json.dumps({"type": "FeatureCollection", "features": feats}))
            return path
        if selectors is not None:
            header = [str(c) for c in selectors]
        else:
            cols: list[str] = []
            for f in feats:
                cols.extend(k for k in f["properties"] if k not in cols)
            header = ["system:index", *cols, ".geo"]
        w = csv.writer(fh)
        w.writerow(header)
        for f in feats:
            p = f["properties"]
            cells = {"system:index": f.get("id", ""),
                     ".geo": json.dumps(f["geometry"], separators=(",", ":"))}
            w.writerow([cells[c] if c in cells else ("" if p.get(c) is None else p[c])
                        for c in header])
    return path


# --- transports -------------------------------------------------------------------------------


class InProcessTransport:
    """An httplib2-like object for ``ee.Initialize(http_transport=...)``: no socket at all."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: Any = None,
                redirections: Any = None, connection_type: Any = None) -> tuple[Any, bytes]:
        import httplib2

        parts = urlsplit(uri)
        data = body.encode() if isinstance(body, str) else (body or b"")
        try:
            reply = self.emulator.handle(method, parts.path, parse_qs(parts.query), data)
        except Dropped:
            raise ConnectionResetError("Emulator: connection dropped") from None
        return httplib2.Response({"status": reply.status, "content-type": reply.content_type}
                                 ), reply.body


class _Handler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"

    def _refusal(self) -> Reply | None:
        """Why this request is refused before it reaches the emulator (None: it is not).

        The emulator writes files and has no authentication, so only the local client may
        talk to it: a browser page (any ``Origin``, or a "simple" text/plain POST, which
        needs no CORS preflight) and DNS rebinding (a foreign ``Host``) are turned away.
        """
        port = int(self.server.server_address[1])  # type: ignore[index]
        if self.headers.get("Origin") is not None:
            return error_reply(403, "Emulator: requests from a browser (Origin header) are "
                               "refused.", "PERMISSION_DENIED")
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return error_reply(403, f"Emulator: Host '{host}' is refused; it serves only "
                               f"127.0.0.1:{port}.", "PERMISSION_DENIED")
        if self.command == "POST":
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return error_reply(415, "Emulator: POST bodies must be application/json, "
                                   f"not '{ctype}'.", "INVALID_ARGUMENT")
        return None

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        n, reply = self._body_length()
        if reply is not None:  # the body is never read: the connection cannot be reused
            self.close_connection = True
            self._send(reply)
            return
        body = self.rfile.read(n) if n else b""
        reply = self._refusal()
        try:
            if reply is None:
                reply = self.emulator.handle(self.command, parts.path, parse_qs(parts.query),
                                             body)
        except Dropped:
            self.close_connection = True
            return
        self._send(reply)

    def _body_length(self) -> tuple[int, Reply | None]:
        """The request body's declared length, or the refusal of a length that is not a
        number (400) or above the API's payload limit (413, before any of it is read)."""
        raw = self.headers.get("Content-Length") or "0"
        try:
            n = int(raw)
        except ValueError:
            n = -1
        if n < 0:
            return 0, error_reply(400, f"Invalid Content-Length: '{raw[:40]}'.")
        if n > MAX_BODY_BYTES:
            return 0, error_reply(413, "Request payload size exceeds the limit: "
                                  f"{MAX_BODY_BYTES} bytes.")
        return n, None

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the emulator keeps a log
        pass


class _Server(ThreadingHTTPServer):
    """One thread per connection, and a listen backlog for many clients connecting at once
    (socketserver's default of 5 can turn a burst of connects into SYN retries of 1 s)."""

    request_queue_size = 128
    daemon_threads = True


def serve(emulator: Emulator, port: int = 0) -> ThreadingHTTPServer:
    """A loopback HTTP server for ``emulator`` (127.0.0.1 only; port 0 picks a free port).

    Call ``serve_forever()`` on the result (or run it in a thread); its URL is
    ``f"http://127.0.0.1:{server.server_address[1]}"``.
    """
    from aether.errors import InputError

    handler = type("EmulatorHandler", (_Handler,), {"emulator": emulator})
    try:
        server = _Server(("127.0.0.1", port), handler)
    except OSError as e:
        raise InputError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}",
                         "choose another --port, or 0 for any free port") from e
    return server
