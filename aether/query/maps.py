"""Maps of query results: a self-contained HTML map (folium) and a PNG (matplotlib).

The HTML carries Leaflet's JavaScript and CSS inline (vendored in ``data/js``, BSD-2), and
nothing else: no CDN, so it opens offline. Base tiles are optional; when the tile server is
unreachable the page still shows the heat layer, markers, legend and attributions. Several
queries are drawn side by side, one map each, in one page and one figure.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from aether.io.tables import atomic_path
from aether.query.heat import Lattice, square_lattice

if TYPE_CHECKING:
    from aether.query.search import CityIndex, QueryResult

OSM_CREDIT = "© OpenStreetMap contributors"
AEF_CREDIT = ("The AlphaEarth Foundations Satellite Embedding dataset is produced by Google "
              "and Google DeepMind.")
#: Said on every map made from the offline sample's generated raster.
SYNTHETIC_LABEL = "generated raster (the offline sample): not real AlphaEarth"
CMAP = "YlOrRd"
POI_COLOUR = "#6a3d9a"
#: Base-map styles (the city's own OSM data, for maps without tiles): light and thin, so
#: streets and shores stay readable with the heat (over it in ``aether query``'s HTML, under
#: it in ``aether serve``, where the heat is translucent).
BASE_STYLE = {
    "road": {"color": "#ffffff", "weight": 1.2, "opacity": 0.7},
    "rail": {"color": "#555555", "weight": 1.0, "opacity": 0.6, "dashArray": "4 3"},
    "water": {"color": "#4a90c2", "weight": 0.8, "fillColor": "#a6cee3", "fillOpacity": 0.8},
    "green": {"color": "#6a9a4a", "weight": 0, "fillColor": "#b2df8a", "fillOpacity": 0.25},
    "building": {"color": "#777777", "weight": 0.4, "fill": False, "opacity": 0.5},
    "poi": {"radius": 2, "color": "#555555", "weight": 0, "fillColor": "#555555",
            "fillOpacity": 0.6},  # every POI, as the PNG draws them (``aether serve``)
}
OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


def _asset(name: str) -> str:
    return resources.files("aether").joinpath(f"data/js/{name}").read_text(encoding="utf-8")


def _colours(scores: np.ndarray) -> tuple[list[str | None], float, float]:
    """Hex colour per cell from the query's score range (None on masked cells)."""
    import matplotlib
    from matplotlib.colors import to_hex

    ok = np.isfinite(scores)
    lo, hi = (float(np.min(scores[ok])), float(np.max(scores[ok]))) if ok.any() else (0.0, 1.0)
    cmap = matplotlib.colormaps[CMAP]
    t = (scores - lo) / (hi - lo if hi > lo else 1.0)
    return [to_hex(cmap(v)) if np.isfinite(v) else None for v in t], lo, hi


#: Page layout of each panel: the title across the top (it wraps, never clipped), the legend
#: bottom left above the scale bar, the credits bottom right beside it (never over the bar).
PANEL_CSS = """
.aether-title{position:absolute;z-index:1000;top:8px;background:rgba(255,255,255,.92);
 padding:4px 8px;font:bold 14px sans-serif;border-radius:4px;white-space:normal;
 overflow-wrap:anywhere;box-sizing:border-box}
.aether-legend{position:absolute;z-index:1000;background:rgba(255,255,255,.92);padding:6px 8px;
 font:12px sans-serif;border-radius:4px}
.leaflet-control-attribution{max-width:62%;white-space:normal;text-align:right;
 font-size:10px !important;line-height:1.25}
"""


def _legend(lo: float, hi: float, left: float) -> str:
    stops = ", ".join(_hex(v) for v in np.linspace(0, 1, 6))
    return (
        f'<div class="aether-legend" style="left:calc({left}% + 10px);bottom:64px">'
        "<b>cosine similarity</b>"
        f'<div style="width:160px;height:12px;background:linear-gradient(to right,{stops})">'
        f'</div><div style="display:flex;justify-content:space-between;width:160px">'
        f"<span>{lo:.2f}</span><span>{hi:.2f}</span></div>"
        '<span style="color:#08306b">● top-k cells</span> '
        f'<span style="color:{POI_COLOUR}">● top-k POIs</span></div>'
    )


def html_map(index: CityIndex, results: list[QueryResult], path: Path, *,
             tiles: bool = True) -> Path:
    """Write one self-contained HTML page with one map per query, side by side."""
    import folium
    from branca.element import Element, Figure

    class OfflineMap(folium.Map):
        """A Map that links no external script or style sheet."""

        default_js: ClassVar[list[tuple[str, str]]] = []  # type: ignore[misc]
        default_css: ClassVar[list[tuple[str, str]]] = []  # type: ignore[misc]

    fig = Figure()
    fig.header.add_child(Element(f"<style>{_asset('leaflet.css')}{PANEL_CSS}</style>"),
                         name="leaflet_css")
    fig.header.add_child(Element(f"<script>{_asset('leaflet.js')}</script>"), name="leaflet_js")
    w, s, e, n = index.grid.total_bounds
    width = 100.0 / len(results)
    credit = AEF_CREDIT if tiles else f"{OSM_CREDIT} | {AEF_CREDIT}"  # tiles credit OSM
    for i, res in enumerate(results):
        m = OfflineMap(location=[(s + n) / 2, (w + e) / 2], tiles=None, width=f"{width}%",
                       height="100%", left=f"{i * width}%", top="0%", position="absolute",
                       control_scale=True, prefer_canvas=True)
        if tiles:
            folium.TileLayer(OSM_TILES, attr=OSM_CREDIT, name="OpenStreetMap").add_to(m)
        m.fit_bounds([[s, w], [n, e]])
        colours, lo, hi = _colours(res.scores)
        cells = index.grid[["cell_id", "geometry"]].assign(
            score=np.round(res.scores, 4), colour=colours)
        cells = cells[cells["colour"].notna()]
        folium.GeoJson(
            cells.to_json(), name=f"heat: {res.query}",
            style_function=lambda f: {"fillColor": f["properties"]["colour"], "weight": 0,
                                      "fillOpacity": 0.75},
            tooltip=folium.GeoJsonTooltip(["cell_id", "score"]),
        ).add_to(m)
        if index.basemap is not None and len(index.basemap):
            folium.GeoJson(
                index.basemap.to_json(), name="base map (OpenStreetMap)",
                style_function=lambda f: BASE_STYLE[f["properties"]["layer"]],
            ).add_to(m)
        for row in (res.top_pois.itertuples() if res.top_pois is not None else ()):
            folium.CircleMarker([row.lat, row.lon], radius=4, color="#ffffff", weight=1,
                                fill=True, fill_color=POI_COLOUR, fill_opacity=1,
                                tooltip=f"POI #{row.rank} {html.escape(row.name)} "
                                        f"({html.escape(row.category)}) {row.score:.3f}",
                                ).add_to(m)
        for row in res.top.itertuples():
            pois = "".join(f"<li>{html.escape(p['name'])} ({html.escape(p['category'])}, "
                           f"{p['distance_m']:.0f} m)</li>" for p in row.nearest_pois)
            popup = (f"<b>#{row.rank}</b> score {row.score:.3f}<br>cell {row.cell_id}"
                     f"<br>nearest POIs:<ul>{pois}</ul>")
            marker = folium.CircleMarker([row.lat, row.lon], radius=7, color="#08306b",
                                         weight=2, fill=True, fill_color="#2171b5",
                                         fill_opacity=0.9, tooltip=f"#{row.rank} {row.score:.3f}")
            marker.add_child(_call("bindPopup", popup)).add_to(m)
        title = (f'<div class="aether-title" style="left:calc({i * width}% + 50px);'
                 f'max-width:calc({width}% - 60px)">{html.escape(res.query)}</div>')
        m.add_child(_call("attributionControl.addAttribution", credit))
        fig.add_child(m)
        fig.html.add_child(Element(title + _legend(lo, hi, i * width)))
    with atomic_path(path) as tmp:
        fig.save(str(tmp))
    path.chmod(0o644)  # a page to open and share, not a private temp file
    return path


def _call(method: str, arg: str) -> Any:
    """A script line ``<parent>.<method>(<arg as a JS string>)``: folium's own Popup needs
    jQuery from a CDN, and the attribution control has no folium element."""
    import json

    from branca.element import MacroElement
    from jinja2 import Template

    class Call(MacroElement):
        _template = Template(
            "{% macro script(this, kwargs) %}"
            "{{ this._parent.get_name() }}.{{ this.method }}({{ this.arg }});"
            "{% endmacro %}")

        def __init__(self) -> None:
            super().__init__()
            # the page is UTF-8: the credits read as written (©), and no "</" can end
            # the script element early
            self.method = method
            self.arg = json.dumps(arg, ensure_ascii=False).replace("</", "<\\/")

    return Call()


def titled(results: list[QueryResult], *, synthetic: bool) -> list[QueryResult]:
    """The results with titles that also say what a map cannot show: a tiny spread of the
    scores, and a raster that is generated, not AlphaEarth."""
    import dataclasses

    said = [SYNTHETIC_LABEL] if synthetic else []
    return [dataclasses.replace(r, query=" · ".join([r.query, *([r.note] if r.note else []),
                                                      *said]))
            for r in results]


def png_map(index: CityIndex, results: list[QueryResult], path: Path) -> Path:
    """The same maps as a PNG, side by side (cells in the city's UTM crs). The titles (with
    what they warn of: a tiny spread, a generated raster) and the credits are also the PNG's
    Title and Copyright text, so a copy that loses its caption still says them."""
    import matplotlib.pyplot as plt

    fig = png_figure(index, results)
    meta = {"Title": " | ".join(r.query for r in results),
            "Copyright": f"{OSM_CREDIT}. {AEF_CREDIT}"}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata=meta)
    plt.close(fig)
    path.chmod(0o644)
    return path


def png_figure(index: CityIndex, results: list[QueryResult]) -> Any:
    """The matplotlib figure of ``png_map``: a panel per query with the heat, the top cells
    and POIs, the city's own streets and water when known, a scale bar and a north arrow."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lattice = square_lattice(index.grid["x"].to_numpy(float), index.grid["y"].to_numpy(float))
    cells = index.grid.to_crs(index.crs) if lattice is None else None
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 6), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        if lattice is not None:
            _lattice_heat(ax, lattice, res.scores)
        elif cells is not None:
            ok = np.isfinite(res.scores)
            if not ok.all():
                cells[~ok].plot(ax=ax, color="#dddddd", linewidth=0)
            cells[ok].assign(score=res.scores[ok]).plot(ax=ax, column="score", cmap=CMAP,
                                                        linewidth=0, legend=True,
                                                        legend_kwds={"shrink": 0.6,
                                                                     "label": "cosine"})
        if index.basemap is not None and len(index.basemap):
            base = index.basemap.to_crs(index.crs)
            for layer, style in (("water", {"color": "#a6cee3"}),
                                 ("road", {"color": "white", "linewidth": 0.6, "alpha": 0.8})):
                part = base[base["layer"] == layer]
                if len(part):
                    part.plot(ax=ax, **style)
        ax.scatter(index.pois["x"], index.pois["y"], s=1, c="#555555", alpha=0.4)
        ax.scatter(res.top["x"], res.top["y"], s=60, facecolors="none", edgecolors="#08306b",
                   linewidths=2, label=f"top {len(res.top)} cells")
        if res.top_pois is not None and len(res.top_pois):
            ax.scatter(res.top_pois["x"], res.top_pois["y"], s=18, c=POI_COLOUR,
                       edgecolors="white", linewidths=0.5, label=f"top {len(res.top_pois)} POIs")
        ax.set_title(textwrap.fill(res.query, 38), fontsize=11,
                     parse_math=False)  # "$5 _x^2" is text, not mathtext
        ax.set_axis_off()
        ax.legend(loc="upper left", fontsize=8)
        _scale_bar(ax)
        _north_arrow(ax)
    # wrapped to the figure's width, so a one-panel map keeps the whole credit
    fig.text(0.01, 0.01, f"{OSM_CREDIT}.\n{AEF_CREDIT}", fontsize=7, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _lattice_heat(ax: Any, lattice: Lattice, scores: np.ndarray) -> None:
    """A square grid's scores as one image in its own UTM crs (its cells are that image's
    pixels): a polygon per cell took 13 s at 90,000 cells, and would take minutes at 1 M."""
    import matplotlib.pyplot as plt

    img = np.full(lattice.rows.shape, np.nan, np.float32)
    inside = lattice.rows < lattice.n_cells
    img[inside] = scores[lattice.rows[inside]]
    cmap = plt.get_cmap(CMAP).copy()
    cmap.set_bad("#dddddd")  # masked cells grey, as the polygons drew them
    ny, nx = lattice.rows.shape
    half = lattice.size / 2
    im = ax.imshow(img, origin="lower", cmap=cmap, interpolation="nearest",
                   extent=(lattice.x0 - half, lattice.x0 + (nx - 1) * lattice.size + half,
                           lattice.y0 - half, lattice.y0 + (ny - 1) * lattice.size + half))
    ax.figure.colorbar(im, ax=ax, shrink=0.6, label="cosine")


def _nice_length(span_m: float) -> float:
    """A round bar length (1, 2 or 5 × 10^n m) near a fifth of the map's width."""
    target = span_m / 5
    base = 10 ** np.floor(np.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target))


def _scale_bar(ax: Any) -> None:
    """A scale bar in the lower left: the axes are UTM metres, so a bar is its length."""
    from matplotlib.patches import Rectangle

    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    length = _nice_length(x1 - x0)
    x, y = x0 + 0.04 * (x1 - x0), y0 + 0.04 * (y1 - y0)
    ax.add_patch(Rectangle((x, y), length, 0.008 * (y1 - y0), color="black", zorder=5))
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    ax.text(x + length / 2, y + 0.015 * (y1 - y0), label, ha="center", va="bottom",
            fontsize=8, zorder=5, gid="scale-bar")


def _north_arrow(ax: Any) -> None:
    """A north arrow in the upper right (UTM grid north is true north to within ~2°)."""
    ax.annotate("N", xy=(0.95, 0.97), xytext=(0.95, 0.87), xycoords="axes fraction",
                ha="center", va="center", fontsize=10, fontweight="bold", gid="north-arrow",
                arrowprops={"arrowstyle": "-|>", "color": "black", "lw": 1.5})


def geemap_map(index: CityIndex, results: list[QueryResult]) -> Any:
    """The same layers on a geemap ``Map`` for notebooks (needs the ``geemap`` extra)."""
    try:
        import geemap
        import ipyleaflet
    except ImportError as err:
        from aether.errors import InputError

        raise InputError("geemap is not installed", "pip install 'aether[geemap]'") from err
    w, s, e, n = index.grid.total_bounds
    m = geemap.Map(center=[(s + n) / 2, (w + e) / 2], zoom=15, ee_initialize=False)
    for res in results:
        colours, lo, hi = _colours(res.scores)
        cells = index.grid[["cell_id", "geometry"]].assign(
            score=np.round(res.scores, 4), colour=colours)
        m.add_gdf(cells[cells["colour"].notna()], layer_name=f"heat: {res.query}",
                  style={"weight": 0, "fillOpacity": 0.75}, zoom_to_layer=False,
                  style_callback=lambda f: {"fillColor": f["properties"]["colour"]})
        top = ipyleaflet.LayerGroup(name=f"top {len(res.top)}: {res.query}", layers=[
            ipyleaflet.CircleMarker(location=(r.lat, r.lon), radius=7, color="#08306b",
                                    fill_color="#2171b5", fill_opacity=0.9,
                                    title=f"#{r.rank} {r.score:.3f}")
            for r in res.top.itertuples()])
        m.add_layer(top)
        m.add_legend(title=f"cosine: {res.query}", layer_name=f"heat: {res.query}",
                     legend_dict={f"{v:.2f}": _hex(t) for v, t in
                                  zip(np.linspace(lo, hi, 5), np.linspace(0, 1, 5), strict=True)})
    m.add_text(f"{OSM_CREDIT}. {AEF_CREDIT}", fontsize=10, position="bottomleft")
    return m


def _hex(t: float) -> str:
    """Colour of the heat scale at ``t`` in [0, 1]."""
    import matplotlib
    from matplotlib.colors import to_hex

    return to_hex(matplotlib.colormaps[CMAP](t))
