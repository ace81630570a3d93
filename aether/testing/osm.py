"""A loopback stand-in for Nominatim and Overpass that answers from a local PBF.

It lets osmnx's real HTTP, caching and parsing code run offline and unpatched: point
``ox.settings.nominatim_url`` / ``overpass_url`` (or ``AETHER_NOMINATIM_URL`` /
``AETHER_OVERPASS_URL``) at ``standin.nominatim_url`` / ``standin.overpass_url``.

What it answers (the query shapes osmnx 2.x emits):

- ``GET /nominatim/search?q=...&format=json&polygon_geojson=1&limit=N`` and
  ``GET /nominatim/lookup?osm_ids=R1,W2,...``: a gazetteer of the PBF's ``place=*`` nodes
  and ways and its named boundary relations. A boundary relation whose member ways reach
  beyond the extract is answered with its part inside the extract (the extract's bounds
  plus ~10 m), which is what a city-centre extract of a city really is.
- ``POST /api/interpreter`` with ``data=[out:json]...;((node['k'='v'](poly:'lat lon ...');
  (._;>;););...);out;``: elements with those tags in the polygon, recursed down to their
  nodes and member ways, in Overpass's JSON. ``GET /api/status`` answers "slots available".
- Faults, injected per service for the next requests: ``"429"`` (with ``Retry-After``),
  ``"504"`` (gateway timeout) and ``"timeout"`` (HTTP 200 with Overpass's
  ``"remark": "runtime error: Query timed out ..."`` and no elements).

Run it for a user: ``python -m aether.testing.osm PATH.osm.pbf [--port N]``.
"""

from __future__ import annotations

import ast
import json
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

LICENCE = "Data © OpenStreetMap contributors, ODbL 1.0. https://osm.org/copyright"
PLACE_IMPORTANCE = {"city": 0.6, "town": 0.5, "village": 0.4, "suburb": 0.35, "quarter": 0.3,
                    "neighbourhood": 0.3, "square": 0.25, "city_block": 0.2}
_QUOTED = r"""(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_COMPONENT = re.compile(
    rf"\((?P<kind>node|way|relation)\[(?P<key>{_QUOTED})(?:=(?P<value>{_QUOTED}))?\]"
    rf"\(poly:(?P<poly>{_QUOTED})\);\(\._;>;\);\);")
EDGE_MARGIN_DEG = 1e-4  # ~10 m around the extract, so POIs on its edge stay inside
_KINDS = {"n": "node", "w": "way", "r": "relation"}
FAULTS = ("429", "504", "timeout")


@dataclass
class OsmData:
    """A PBF held in memory: nodes (lon, lat), ways (node refs), relations (members), tags."""

    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)
    ways: dict[int, list[int]] = field(default_factory=dict)
    relations: dict[int, list[tuple[str, int, str]]] = field(default_factory=dict)
    tags: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    by_key: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    #: what the database is as of: the newest edit it holds (Overpass's timestamp_osm_base)
    osm_base: str | None = None

    @classmethod
    def read(cls, path: str | Path) -> OsmData:
        import osmium

        data = cls()
        obj: Any  # a Node, Way or Relation: the is_*() checks below tell which
        newest = None
        for obj in osmium.FileProcessor(str(path)):
            if obj.timestamp and (newest is None or obj.timestamp > newest):
                newest = obj.timestamp
            if obj.is_node():
                kind = "node"
                data.nodes[obj.id] = (obj.location.lon, obj.location.lat)
            elif obj.is_way():
                kind = "way"
                data.ways[obj.id] = [n.ref for n in obj.nodes]
            else:
                kind = "relation"
                data.relations[obj.id] = [(_KINDS[m.type], m.ref, m.role) for m in obj.members]
            if len(obj.tags):
                data.tags[(kind, obj.id)] = dict(obj.tags)
                for k in obj.tags:
                    data.by_key[k.k].append((kind, obj.id))
        data.osm_base = newest.strftime("%Y-%m-%dT%H:%M:%SZ") if newest else None
        return data

    def geometry(self, kind: str, oid: int) -> Any:
        """Shapely geometry of what the extract holds of an element (None if nothing)."""
        from shapely.geometry import GeometryCollection, LineString, Point

        if kind == "node":
            return Point(self.nodes[oid]) if oid in self.nodes else None
        if kind == "way":
            coords = [self.nodes[n] for n in self.ways.get(oid, []) if n in self.nodes]
            return LineString(coords) if len(coords) > 1 else (
                Point(coords[0]) if coords else None)
        parts = [self.geometry(k, r) for k, r, _ in self.relations.get(oid, []) if k != "relation"]
        parts = [p for p in parts if p is not None]
        return GeometryCollection(parts) if parts else None

    def area(self, kind: str, oid: int) -> Any:
        """The polygon of a closed way or of a boundary/multipolygon relation, clipped to the
        extract's bounds when members are missing; None when it is no area."""
        import shapely
        from shapely.ops import polygonize, unary_union

        if kind == "way":
            refs = self.ways.get(oid, [])
            if len(refs) >= 4 and refs[0] == refs[-1] and all(n in self.nodes for n in refs):
                return shapely.make_valid(shapely.Polygon([self.nodes[n] for n in refs]))
            return None
        members = [(r, role) for k, r, role in self.relations.get(oid, []) if k == "way"]
        if not members:
            return None
        if any(r not in self.ways or any(n not in self.nodes for n in self.ways[r])
               for r, _ in members):
            return shapely.box(*self.bounds()).buffer(EDGE_MARGIN_DEG, join_style="mitre")
        lines = [self.geometry("way", r) for r, role in members if role in ("outer", "")]
        polys = list(polygonize(unary_union(lines)))
        return unary_union(polys) if polys else None

    def bounds(self) -> tuple[float, float, float, float]:
        import numpy as np

        xy = np.array(list(self.nodes.values()))
        return (*xy.min(axis=0), *xy.max(axis=0))


class Gazetteer:
    """Nominatim's view of the extract: named places and boundaries."""

    def __init__(self, data: OsmData) -> None:
        self.entries: list[dict[str, Any]] = []
        for (kind, oid), tags in data.tags.items():
            if "name" not in tags:
                continue
            if kind == "relation" and tags.get("type") in ("boundary", "multipolygon") and (
                    "boundary" in tags or "place" in tags):
                level = int(tags["admin_level"]) if tags.get("admin_level", "").isdigit() else 8
                importance = round(0.95 - 0.04 * level, 4)
            elif "place" in tags and kind != "relation":
                importance = PLACE_IMPORTANCE.get(tags["place"], 0.15)
            else:
                continue
            geom = data.area(kind, oid) if kind != "node" else data.geometry(kind, oid)
            if geom is None or geom.is_empty:
                continue
            self.entries.append(_result(kind, oid, tags, geom, importance))
        self.entries.sort(key=lambda r: (-r["importance"], r["osm_type"], r["osm_id"]))

    def search(self, query: str, limit: int) -> list[dict[str, Any]]:
        wanted = query.split(",")[0].strip().casefold()
        hits = [e for e in self.entries if wanted in e["_names"]]
        return hits[:limit]

    def lookup(self, ids: list[str]) -> list[dict[str, Any]]:
        want = {(_KINDS.get(i[:1].lower(), ""), int(i[1:])) for i in ids if i[1:].isdigit()}
        return [e for e in self.entries if (e["osm_type"], e["osm_id"]) in want]


def _result(kind: str, oid: int, tags: dict[str, str], geom: Any, importance: float) -> dict:
    """One Nominatim ``format=json`` result (``_names`` is internal, stripped on output)."""
    from shapely.geometry import mapping

    west, south, east, north = geom.bounds
    point = geom.representative_point()
    cls = "boundary" if "boundary" in tags else "place"
    return {
        "place_id": oid * 3 + ("node", "way", "relation").index(kind), "licence": LICENCE,
        "osm_type": kind, "osm_id": oid, "lat": f"{point.y:.7f}", "lon": f"{point.x:.7f}",
        "class": cls, "type": tags.get(cls, "yes"), "place_rank": 16,
        "importance": importance, "addresstype": tags.get("place", cls),
        "name": tags["name"], "display_name": tags["name"],
        "boundingbox": [f"{south:.7f}", f"{north:.7f}", f"{west:.7f}", f"{east:.7f}"],
        "geojson": mapping(geom),
        "_names": {v.casefold() for k, v in tags.items() if k == "name" or k.startswith("name:")},
    }


def overpass_answer(data: OsmData, query: str) -> dict[str, Any]:
    """Elements matching an osmnx features query, recursed down, in Overpass JSON."""
    import numpy as np
    import shapely
    from shapely.prepared import prep

    components = list(_COMPONENT.finditer(query))
    if not components:
        raise ValueError("unsupported Overpass query (only osmnx features queries)")
    found: set[tuple[str, int]] = set()
    polys: dict[str, Any] = {}
    for m in components:
        kind, key = m["kind"], ast.literal_eval(m["key"])
        value = ast.literal_eval(m["value"]) if m["value"] else None
        poly_str = ast.literal_eval(m["poly"])
        if poly_str not in polys:
            ll = np.array(poly_str.split(), dtype=float).reshape(-1, 2)
            polys[poly_str] = prep(shapely.Polygon(ll[:, ::-1]))
        poly = polys[poly_str]
        for k, oid in data.by_key.get(key, []):
            if k != kind or (value is not None and data.tags[(k, oid)][key] != value):
                continue
            geom = data.geometry(k, oid)
            if geom is not None and poly.intersects(geom):
                found.add((k, oid))
    out: set[tuple[str, int]] = set(found)
    for kind, oid in found:  # (._;>;): members, and the nodes of ways
        if kind == "relation":
            for k, r, _ in data.relations[oid]:
                if k != "relation":
                    out.add((k, r))
    for kind, oid in list(out):
        if kind == "way":
            out.update(("node", n) for n in data.ways.get(oid, []))
    order = {"node": 0, "way": 1, "relation": 2}
    elements = [_element(data, k, i) for k, i in sorted(out, key=lambda e: (order[e[0]], e[1]))
                if (k == "node" and i in data.nodes) or (k == "way" and i in data.ways)
                or (k == "relation" and i in data.relations)]
    return {"version": 0.6, "generator": "aether loopback Overpass stand-in",
            "osm3s": {"timestamp_osm_base": data.osm_base, "copyright": LICENCE},
            "elements": elements}


def _element(data: OsmData, kind: str, oid: int) -> dict[str, Any]:
    el: dict[str, Any] = {"type": kind, "id": oid}
    if kind == "node":
        el["lon"], el["lat"] = data.nodes[oid]
    elif kind == "way":
        el["nodes"] = data.ways[oid]
    else:
        el["members"] = [{"type": k, "ref": r, "role": role} for k, r, role in data.relations[oid]]
    if (kind, oid) in data.tags:
        el["tags"] = data.tags[(kind, oid)]
    return el


STATUS = ("Connected as: 2130706433\nCurrent time: 2026-01-01T00:00:00Z\n"
          "Announced endpoint: none\nRate limit: 2\n2 slots available now.\n"
          "Currently running queries (pid, space limit, time limit, start time):\n")


class OsmStandIn:
    """The stand-in server on 127.0.0.1 (port 0 = any free port), usable as a context manager."""

    def __init__(self, pbf: str | Path, port: int = 0) -> None:
        self.data = OsmData.read(pbf)
        self.gazetteer = Gazetteer(self.data)
        self.requests: list[tuple[str, str]] = []  # (service, path) of every request served
        self._faults: dict[str, list[tuple[str, int]]] = {"overpass": [], "nominatim": []}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def nominatim_url(self) -> str:
        return f"{self.base_url}/nominatim/"

    @property
    def overpass_url(self) -> str:
        return f"{self.base_url}/api"

    def inject(self, fault: str, times: int = 1, *, service: str = "overpass",
               retry_after: int = 1) -> None:
        """Answer the next ``times`` requests to ``service`` with ``fault`` (see FAULTS)."""
        if fault not in FAULTS or service not in self._faults:
            raise ValueError(f"fault must be one of {FAULTS}, service overpass or nominatim")
        with self._lock:
            self._faults[service].extend([(fault, retry_after)] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = {"overpass": [], "nominatim": []}

    def environment(self, cache_dir: str | Path | None = None) -> dict[str, str]:
        """The variables that point aether (also in a subprocess) at this stand-in."""
        env = {"AETHER_NOMINATIM_URL": self.nominatim_url,
               "AETHER_OVERPASS_URL": self.overpass_url}
        if cache_dir is not None:
            env["AETHER_OSM_CACHE"] = str(cache_dir)
        return env

    def next_fault(self, service: str) -> tuple[str, int] | None:
        with self._lock:
            return self._faults[service].pop(0) if self._faults[service] else None

    def count(self, service: str) -> int:
        return sum(1 for s, _ in self.requests if s == service)

    def start(self) -> OsmStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OsmStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(standin: OsmStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            return

        def _send(self, status: int, body: bytes, ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any) -> None:
            self._send(200, json.dumps(obj).encode())

        def _fault(self, service: str) -> bool:
            fault = standin.next_fault(service)
            if fault is None:
                return False
            kind, retry_after = fault
            if kind == "429":
                self._send(429, b"Too Many Requests", "text/plain",
                           {"Retry-After": str(retry_after)})
            elif kind == "504":
                self._send(504, b"<html><body>504 Gateway Timeout</body></html>", "text/html")
            else:
                self._json({"version": 0.6, "elements": [], "remark":
                            'runtime error: Query timed out in "query" at line 1 after 180 '
                            "seconds."})
            return True

        def do_GET(self) -> None:
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path.startswith("/api/status"):
                self._send(200, STATUS.encode(), "text/plain")
                return
            if not url.path.startswith("/nominatim/"):
                self._send(404, b"not found", "text/plain")
                return
            standin.requests.append(("nominatim", self.path))
            if self._fault("nominatim"):
                return
            endpoint = url.path.rsplit("/", 1)[-1]
            if endpoint == "search" and "q" in params:
                results = standin.gazetteer.search(params["q"], int(params.get("limit", 10)))
            elif endpoint == "lookup" and "osm_ids" in params:
                results = standin.gazetteer.lookup(params["osm_ids"].split(","))
            else:
                self._send(400, b"unsupported Nominatim request", "text/plain")
                return
            geojson = params.get("polygon_geojson") == "1"
            self._json([{k: v for k, v in r.items()
                         if k != "_names" and (geojson or k != "geojson")} for r in results])

        def do_POST(self) -> None:
            if not urlparse(self.path).path.startswith("/api/interpreter"):
                self._send(404, b"not found", "text/plain")
                return
            length = int(self.headers.get("Content-Length", 0))
            form = parse_qs(self.rfile.read(length).decode())
            standin.requests.append(("overpass", self.path))
            if self._fault("overpass"):
                return
            try:
                answer = overpass_answer(standin.data, form.get("data", [""])[-1])
            except ValueError as e:
                self._send(400, f"Error: {e}".encode(), "text/plain")
                return
            self._json(answer)

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve a PBF until interrupted; print the environment that points aether at it."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pbf")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    standin = OsmStandIn(args.pbf, args.port).start()
    for k, v in standin.environment().items():
        print(f"export {k}={v}", flush=True)
    try:
        standin._thread.join()
    except KeyboardInterrupt:
        standin.stop()


if __name__ == "__main__":
    main()
