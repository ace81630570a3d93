"""``aether serve``: ask a city anything in the browser.

A small ASGI app (FastAPI, served by uvicorn) over a city's encoded grid: the grid's vectors are
held in memory as float32, queries are encoded server-side by each model's own text encoder
and heads, and the page (Leaflet from the package, no CDN) draws one heat map per model side
by side. Raw AlphaEarth (the grid's own 64-d means) is a panel too: it has no text space, so it
answers "more like this" only, which is exactly what shows what the alignment adds.

It binds 127.0.0.1 and refuses any Host header but the loopback names unless ``--host`` was
given, so a web page the user visits cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import io
import logging
import socket
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.errors import AetherError, InputError
from aether.query.maps import AEF_CREDIT, OSM_CREDIT
from aether.query.search import CityIndex, QueryResult, check_queries, ranked
from aether.query.similar import VectorIndex, example_vector, parse_lonlat

if TYPE_CHECKING:
    from aether.core.cells import CellSpec
    from aether.ml.encode import ModelRun

log = logging.getLogger(__name__)

RAW = "alphaearth"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_K = 200
#: Files the page may load, by name: nothing a request names can reach another file.
STATIC = {
    "leaflet.js": ("js/leaflet.js", "text/javascript"),
    "leaflet.css": ("js/leaflet.css", "text/css"),
    "app.js": ("web/app.js", "text/javascript"),
    "app.css": ("web/app.css", "text/css"),
}


@dataclass
class Panel:
    """One model's view of the city: its grid index, its vectors and (for text) its run."""

    name: str
    index: CityIndex
    vectors: VectorIndex
    run: ModelRun | None  # None: raw AlphaEarth, no text space

    def answer(self, label: str, scores: np.ndarray, k: int) -> QueryResult:
        return QueryResult(label, scores, ranked(self.index, scores, k=k))


class CityApp:
    """The state behind the web app: every panel loaded once, queries answered from memory."""

    def __init__(self, city: str, panels: list[Panel], *, tiles: bool = False) -> None:
        if not panels:
            raise InputError(f"nothing to serve for {city}", "run `aether encode` first")
        self.city = city
        self.tiles = tiles
        self.panels = {p.name: p for p in panels}
        self._grid_json: dict[str, str] = {}

    def panel(self, name: str | None) -> Panel:
        if name is None:
            return next(iter(self.panels.values()))
        if name not in self.panels:
            raise InputError(f"unknown model {name!r}", f"served: {', '.join(self.panels)}")
        return self.panels[name]

    def grid_geojson(self, name: str) -> str:
        """Cell polygons of a panel's grid (ids and geometry only), built once."""
        if name not in self._grid_json:
            grid = self.panel(name).index.grid[["cell_id", "geometry"]]
            self._grid_json[name] = grid.to_json(drop_id=True, to_wgs84=True)
        return self._grid_json[name]

    def text(self, name: str, q: str, k: int) -> QueryResult:
        from aether.ml.encode import apply_text

        panel = self.panel(name)
        (q,) = check_queries([q])
        if panel.run is None:
            raise InputError(f"{name} has no text space: it cannot read {q!r}",
                             "click a cell for places like it, or pick a trained model")
        vec = apply_text(panel.run, [q])[0]
        return panel.answer(q, panel.vectors.scores(vec / np.linalg.norm(vec)), _k(k))

    def like(self, name: str, at: list[str], not_at: list[str], k: int) -> QueryResult:
        from aether.query.similar import cells_at

        panel = self.panel(name)
        if not at:
            raise InputError("no example place given", "pass at=LON,LAT")
        pos = panel.index.vectors[cells_at(panel.index, [parse_lonlat(a) for a in at])]
        neg = (panel.index.vectors[cells_at(panel.index, [parse_lonlat(a) for a in not_at])]
               if not_at else None)
        q = example_vector(pos, neg)
        return panel.answer("more like this", panel.vectors.scores(q), _k(k))


def _k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k = {k}", f"ask for 1 to {MAX_K} places")
    return k


def result_json(res: QueryResult, model: str) -> dict[str, Any]:
    """What the page draws: a score per grid cell (null where masked) and the top cells."""
    scores = [None if not np.isfinite(v) else round(float(v), 4) for v in res.scores]
    ok = np.isfinite(res.scores)
    lo, hi = (float(res.scores[ok].min()), float(res.scores[ok].max())) if ok.any() else (0, 1)
    top = res.top.drop(columns=["x", "y"]).to_dict(orient="records")
    for row in top:
        row["score"] = round(float(row["score"]), 4)
        row["rank"] = int(row["rank"])
    return {"model": model, "query": res.query, "scores": scores, "lo": lo, "hi": hi,
            "top": top}


def result_geojson(app_state: CityApp, res: QueryResult, model: str) -> dict[str, Any]:
    """The current answer as GeoJSON: each cell with its score and rank, and the credits."""
    import json

    grid = app_state.panel(model).index.grid[["cell_id", "geometry"]]
    rank = dict(zip(res.top["cell_id"], res.top["rank"], strict=True))
    out = grid.assign(score=[None if not np.isfinite(v) else float(v) for v in res.scores],
                      rank=[rank.get(c) for c in grid["cell_id"]])
    doc = json.loads(out.to_json(drop_id=True, to_wgs84=True))
    doc.update(query=res.query, model=model, attribution=[OSM_CREDIT, AEF_CREDIT])
    return doc


def page() -> str:
    return resources.files("aether").joinpath("data/web/index.html").read_text("utf-8")


def create_app(state: CityApp, *, allowed_hosts: list[str] | None = None) -> Any:
    """The FastAPI app over ``state``; Host headers outside ``allowed_hosts`` get a 400."""
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="aether", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK))

    @app.exception_handler(AetherError)
    async def _typed(_: Request, e: AetherError) -> JSONResponse:
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=400)

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
        first = state.panel(None).index.grid
        w, s, e, n = first.to_crs("EPSG:4326").total_bounds
        return {"city": state.city, "bounds": [[s, w], [n, e]],
                "models": [{"name": p.name, "text": p.run is not None}
                           for p in state.panels.values()],
                "attribution": [OSM_CREDIT, AEF_CREDIT], "tiles": state.tiles}

    @app.get("/api/grid")
    def grid(model: str) -> Response:
        return Response(state.grid_geojson(state.panel(model).name),
                        media_type="application/geo+json")

    def answer(model: str, q: str | None, at: list[str], not_at: list[str], k: int
               ) -> QueryResult:
        if at:
            return state.like(model, at, not_at, k)
        if q is None:
            raise InputError("no query given", "pass q=... or at=LON,LAT")
        return state.text(model, q, k)

    @app.get("/api/query")
    def query(model: str, q: str | None = None, k: int = 10,
              at: list[str] = Query(default=[]),  # noqa: B008  (FastAPI's declaration)
              not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
              ) -> dict[str, Any]:
        return result_json(answer(model, q, at, not_, k), model)

    @app.get("/api/export.geojson")
    def export_geojson(model: str, q: str | None = None, k: int = 10,
                       at: list[str] = Query(default=[]),  # noqa: B008
                       not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                       ) -> JSONResponse:
        res = answer(model, q, at, not_, k)
        return JSONResponse(result_geojson(state, res, model), media_type="application/geo+json",
                            headers={"Content-Disposition":
                                     'attachment; filename="aether-query.geojson"'})

    @app.get("/api/export.png")
    def export_png(model: str, q: str | None = None, k: int = 10,
                   at: list[str] = Query(default=[]),  # noqa: B008
                   not_: list[str] = Query(default=[], alias="not"),  # noqa: B008
                   ) -> Response:
        from aether.query.maps import png_map

        res = answer(model, q, at, not_, k)
        with tempfile.TemporaryDirectory() as tmp:
            path = png_map(state.panel(model).index, [res], Path(tmp) / "query.png")
            data = io.BytesIO(path.read_bytes())
        return Response(data.getvalue(), media_type="image/png",
                        headers={"Content-Disposition": 'attachment; filename="aether-query.png"'})

    return app


def load_panels(city_dir: Path, runs: list[ModelRun], cell: str | float | CellSpec, *,
                raw: bool = True) -> list[Panel]:
    """A panel per trained run (its encoded grid), plus raw AlphaEarth (the grid's means)."""
    from aether.core.aef import BANDS
    from aether.ml.encode import apply_text, read_grid
    from aether.query.search import load_index

    panels = []
    for run in runs:
        idx = load_index(city_dir, run, cell)
        apply_text(run, ["warm up the text encoder"])  # the first query answers fast
        panels.append(Panel(run.name, idx, VectorIndex(idx.vectors), run))
    if raw and panels:
        base = panels[0].index
        grid = read_grid(city_dir, cell).set_index("cell_id").reindex(base.grid["cell_id"])
        vecs = grid[list(BANDS)].to_numpy(np.float32)
        idx = CityIndex(base.grid, vecs, base.pois, base.crs)
        panels.append(Panel(RAW, idx, VectorIndex(vecs), None))
    return panels


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A listening socket on ``host:port`` (0: any free port) and the app's URL; accepting
    before the URL is shown, so a client may connect at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror}",
                         "pick another --port (0: any free port)") from None
    shown = f"[{host}]" if ":" in host else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}/"


def serve(state: CityApp, *, host: str, sock: socket.socket) -> None:
    """Run the app on a listening socket until interrupted. A host other than loopback
    admits any Host header."""
    import uvicorn

    allowed = list(LOOPBACK) if host in LOOPBACK else ["*"]
    config = uvicorn.Config(create_app(state, allowed_hosts=allowed), log_level="warning")
    log.info("serving %s on %s:%d", state.city, host, sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])
