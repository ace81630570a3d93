"""The HTTP side of ``aether serve``: the page, its API, and what guards them.

Every API path refuses a request another site makes the visitor's browser send (403), and
the work of an answer goes through the state's gate (bounded, 503 beyond it). The page draws
the binary reply of ``/api/answer`` (``CityApp.envelope``); ``/api/query`` is the same answer
as JSON for scripts, top-k only. FastAPI is imported here, at the top, because it reads the
endpoints' annotations: this module is only imported when a server starts.
"""

from __future__ import annotations

import json
import logging
import socket
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware

from aether.errors import AetherError, BusyError, InputError
from aether.query.labels import (
    MAX_LABEL_BYTES,
    MAX_LABELS,
    Labels,
    labels_csv,
    labels_geojson,
    read_labels,
)
from aether.query.maps import AEF_CREDIT, BASE_STYLE, OSM_CREDIT, SYNTHETIC_LABEL
from aether.query.serve import LOOPBACK, RETRY_AFTER_S, Answer, CityApp, Gate

log = logging.getLogger(__name__)

#: Files the page may load, by name: nothing a request names can reach another file.
STATIC = {
    "leaflet.js": ("js/leaflet.js", "text/javascript"),
    "leaflet.css": ("js/leaflet.css", "text/css"),
    "app.js": ("web/app.js", "text/javascript"),
    "app.css": ("web/app.css", "text/css"),
}


def cross_site(headers: Any, host: str | None) -> str | None:
    """Why a request comes from another site (a page elsewhere making the visitor's browser
    call the app), or None: ``Sec-Fetch-Site`` other than same-origin or none (typed, a
    bookmark), or an ``Origin`` that is not this app."""
    site = headers.get("sec-fetch-site")
    if site not in (None, "same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"Origin: {origin}"
    return None


def page() -> str:
    return resources.files("aether").joinpath("data/web/index.html").read_text("utf-8")


class SameSite:
    """ASGI middleware: an API call another site made the browser send gets a 403."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            headers = Headers(scope=scope)
            why = cross_site(headers, headers.get("host"))
            if why:
                refusal = JSONResponse({"error": f"cross-site request refused ({why})"},
                                       status_code=403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(state: CityApp, *, allowed_hosts: list[str] | None = None) -> Any:
    """The FastAPI app over ``state``; Host headers outside ``allowed_hosts`` get a 400, a
    cross-site call of the API a 403, a request beyond the gate's bounds a 503."""
    app = FastAPI(title="aether", docs_url=None, redoc_url=None, openapi_url=None)
    gate = Gate(state.workers, state.queue)

    app.add_middleware(SameSite)
    # added last, so it runs first: a foreign Host is refused before anything else
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK))

    @app.exception_handler(BusyError)
    async def _busy(_: Request, e: BusyError) -> JSONResponse:
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(AetherError)
    async def _typed(_: Request, e: AetherError) -> JSONResponse:
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=400)

    def gone() -> Response:
        return Response(status_code=499)  # nobody reads it: the client has left

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page()

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        rel, media = STATIC[name]
        return Response(resources.files("aether").joinpath(f"data/{rel}").read_bytes(),
                        media_type=media)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        bounds = [p.heat.bounds for p in state.panels.values()]
        s, w = min(b[0][0] for b in bounds), min(b[0][1] for b in bounds)
        n, e = max(b[1][0] for b in bounds), max(b[1][1] for b in bounds)
        return {"city": state.city, "bounds": [[s, w], [n, e]],
                "models": [{"name": p.name, "text": p.run is not None, "about": p.about}
                           for p in state.panels.values()],
                "attribution": [OSM_CREDIT, AEF_CREDIT], "basemap": state.basemap,
                "base_features": state.base.features if state.base else 0,
                "base_note": state.base_note, "base_style": BASE_STYLE,
                "synthetic": SYNTHETIC_LABEL if state.synthetic else None,
                "sources": state.sources, "max_labels": MAX_LABELS, "load": gate.state()}

    @app.get("/api/basemap.geojson")
    def basemap(request: Request) -> Response:
        """The city's own OSM layers, made at load: bytes sent as they are (gzipped when the
        client takes it), so every panel of every page draws streets with no work here."""
        base = state.base
        if base is None:
            return JSONResponse({"error": f"no city base map (--basemap {state.basemap})"},
                                status_code=404)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(base.gzipped, media_type="application/geo+json",
                            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return Response(base.geojson, media_type="application/geo+json",
                        headers={"Vary": "Accept-Encoding"})

    @app.get("/api/query")
    async def query(request: Request, model: str, q: str | None = None, k: int = 10,
                    at: list[str] = Query(default=[]),  # noqa: B008  (FastAPI's declaration)
                    not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                    mode: str = "search") -> Response:
        """The answer as JSON: top-k as GeoJSON points and the range; no per-cell list."""
        ans = await gate.run(request, state.ask, model, q, at, not_, k, mode)
        return gone() if ans is None else JSONResponse(ans.summary())

    @app.get("/api/answer")
    async def answer(request: Request, model: str, q: str | None = None, k: int = 10,
                     at: list[str] = Query(default=[]),  # noqa: B008
                     not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                     mode: str = "search") -> Response:
        """What the page draws: the summary and the heat raster in one binary reply."""
        def work() -> bytes:
            return state.envelope(state.ask(model, q, at, not_, k, mode))

        body = await gate.run(request, work)
        return gone() if body is None else Response(body, media_type="application/octet-stream")

    @app.get("/api/export.geojson")
    async def export_geojson(request: Request, model: list[str] = Query(),  # noqa: B008
                             q: str | None = None, k: int = 10,
                             at: list[str] = Query(default=[]),  # noqa: B008
                             not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                             mode: str = "search") -> Response:
        """The top-k cells of every model named as GeoJSON polygons (model, score, rank),
        and the credits."""
        def work() -> bytes:
            answers = [state.ask(m, q, at, not_, k, mode) for m in _models(model)]
            return json.dumps(result_geojson(state, answers)).encode()

        body = await gate.run(request, work)
        return gone() if body is None else Response(
            body, media_type="application/geo+json",
            headers={"Content-Disposition": 'attachment; filename="aether-query.geojson"'})

    @app.get("/api/export.png")
    async def export_png(request: Request, model: list[str] = Query(),  # noqa: B008
                         q: str | None = None, k: int = 10,
                         at: list[str] = Query(default=[]),  # noqa: B008
                         not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                         mode: str = "search") -> Response:
        """The maps of every model named, side by side, titled with the model's name."""
        def work() -> bytes:
            import dataclasses

            from aether.query.maps import png_map, titled

            answers = [state.ask(m, q, at, not_, k, mode) for m in _models(model)]
            res = titled([dataclasses.replace(a.result, query=f"{a.model}: {a.result.query}")
                          for a in answers], synthetic=state.synthetic)
            with tempfile.TemporaryDirectory() as tmp:
                path = png_map(state.panel(answers[0].model).index, res,
                               Path(tmp) / "query.png")
                return path.read_bytes()

        body = await gate.run(request, work)
        return gone() if body is None else Response(
            body, media_type="image/png",
            headers={"Content-Disposition": 'attachment; filename="aether-query.png"'})

    @app.get("/api/labels.geojson")
    async def labels_as_geojson(request: Request,
                                at: list[str] = Query(default=[]),  # noqa: B008
                                not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                                ) -> Response:
        """The labelled places as GeoJSON points (label, cell_id), to keep or share."""
        def work() -> bytes:
            labels = Labels.parse(at, not_)
            return json.dumps(labels_geojson(labels, state.cell_ids(labels),
                                             [OSM_CREDIT, AEF_CREDIT])).encode()

        body = await gate.run(request, work)
        return gone() if body is None else Response(
            body, media_type="application/geo+json",
            headers={"Content-Disposition": 'attachment; filename="aether-labels.geojson"'})

    @app.get("/api/labels.csv")
    async def labels_as_csv(request: Request, at: list[str] = Query(default=[]),  # noqa: B008
                            not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                            ) -> Response:
        """The labelled places as CSV rows: label, lon, lat, cell_id."""
        def work() -> bytes:
            labels = Labels.parse(at, not_)
            return labels_csv(labels, state.cell_ids(labels)).encode()

        body = await gate.run(request, work)
        return gone() if body is None else Response(
            body, media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="aether-labels.csv"'})

    @app.post("/api/labels")
    async def import_labels(request: Request) -> Response:
        """A labels file (GeoJSON or CSV, as exported) read and checked: the labels as the
        page's ``at``/``not`` values, or a 400 naming the first bad entry. The body is read
        up to the cap and no further (a larger declared length is refused unread)."""
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_LABEL_BYTES:
            raise InputError(f"the labels file is {declared} bytes",
                             f"import at most {MAX_LABEL_BYTES:,} bytes")
        parts: list[bytes] = []
        async for chunk in request.stream():
            parts.append(chunk)
            if sum(map(len, parts)) > MAX_LABEL_BYTES:
                break
        data = b"".join(parts)

        def work() -> dict[str, list[str]]:
            labels = read_labels(data)
            state.cell_ids(labels)  # every place on the grid, or a 400 naming it
            return labels.params()

        out = await gate.run(request, work)
        return gone() if out is None else JSONResponse(out)

    return app


def result_geojson(state: CityApp, answers: list[Answer]) -> dict[str, Any]:
    """The top-k cells of each answer as GeoJSON polygons (model, score, rank), each answer's
    query, range and note under ``models``, with the credits."""
    import pandas as pd

    frames = []
    for ans in answers:
        grid = state.panel(ans.model).index.grid
        top = ans.result.top
        hit = grid[grid["cell_id"].isin(top["cell_id"])]  # the k rows first: no 1 M-row index
        cols = ["geometry", *(["source"] if "source" in grid else [])]  # a user's file
        cells = hit.set_index("cell_id").loc[top["cell_id"], cols].reset_index()
        frames.append(cells.assign(model=ans.model, rank=top["rank"].to_numpy(),
                                   score=top["score"].astype(float).to_numpy()))
    out = pd.concat(frames, ignore_index=True)
    doc = json.loads(out.to_json(drop_id=True, to_wgs84=True))
    doc.update(query=answers[0].result.query,
               models=[{"model": a.model, "query": a.result.query, "kind": a.kind, "lo": a.lo,
                        "hi": a.hi, "note": a.note} for a in answers],
               attribution=[OSM_CREDIT, AEF_CREDIT],
               synthetic=SYNTHETIC_LABEL if state.synthetic else None)
    return doc


def _models(names: list[str]) -> list[str]:
    """The models named once each, in order; at most the panels served."""
    return list(dict.fromkeys(names))


def _server(state: CityApp, host: str) -> Any:
    """A uvicorn server of the app. A host other than loopback admits any Host header."""
    import uvicorn

    allowed = list(LOOPBACK) if host in LOOPBACK else ["*"]
    # a backstop on open connections (the gate bounds the work): beyond it uvicorn says 503
    config = uvicorn.Config(create_app(state, allowed_hosts=allowed), log_level="warning",
                            limit_concurrency=state.workers + state.queue + 64)
    return uvicorn.Server(config)


def serve(state: CityApp, *, host: str, sock: socket.socket) -> None:
    """Run the app on a listening socket until interrupted."""
    log.info("serving %s on %s:%d", state.city, host, sock.getsockname()[1])
    _server(state, host).run(sockets=[sock])


class ServedApp:
    """The app served from a background thread on loopback, for a notebook: the cell shows
    it in an iframe (``_repr_html_``), a script prints its URL; ``stop()`` ends it."""

    #: How long the server may take to accept connections.
    START_S = 30.0

    def __init__(self, state: CityApp, *, port: int = 0, height: int = 640) -> None:
        import threading
        import time

        from aether.query.serve import listen

        self.city, self.height = state.city, int(height)
        sock, self.url = listen("127.0.0.1", port)
        self._server = _server(state, "127.0.0.1")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"aether-serve-{state.city}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.START_S
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise InputError("the app did not start within "
                                 f"{self.START_S:.0f} s", "see the log for why")
            time.sleep(0.02)
        if not self._thread.is_alive():
            raise InputError("the app stopped as it started", "see the log for why")

    def _repr_html_(self) -> str:
        import html

        return (f'<iframe src="{html.escape(self.url)}" width="100%" height="{self.height}" '
                f'style="border:0" title="aether · {html.escape(self.city)}"></iframe>')

    def stop(self) -> None:
        """Stop serving (the port is free again)."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __repr__(self) -> str:
        state = "serving" if self._thread.is_alive() else "stopped"
        return f"ServedApp({self.city}: {state} at {self.url})"
