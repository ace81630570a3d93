"""The Python API over trained runs of the sample city: ``Model.load(path).encode(frame)`` in
memory gives what ``aether encode`` writes, ``aether.query`` ranks cells by the cosine of
the stored vectors, ``aether.train`` makes a run ``Model.load`` reads."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from support import require

import aether
import aether.api
from aether.errors import ModelError, TableError
from aether.ml.encode import AETHER_COLUMNS

require("torch")


@pytest.fixture(scope="module")
def trained(sample_runs):
    city_dir, names, data_root = sample_runs
    return city_dir, names, data_root, aether.Model.load(city_dir / "models" / names[1])


def test_model_encodes_embed_rows_as_encode_writes(trained, sample_city) -> None:
    city_dir, _, _, model = trained
    pois = gpd.read_parquet(city_dir / "pois.parquet").iloc[::50]
    emb = aether.embed(pois, tiles=sample_city.tiles, radii=[100, model.base_radius_m])
    z = model.encode(emb)
    assert len(z) == len(pois) and (z["radius_m"] == model.base_radius_m).all()
    assert isinstance(z, gpd.GeoDataFrame) and z.crs == "EPSG:4326"
    written = pd.read_parquet(city_dir / "aether" / model.name / "pois.parquet")
    want = written.set_index("poi_id").loc[z["poi_id"], list(AETHER_COLUMNS)].to_numpy()
    np.testing.assert_allclose(z[list(AETHER_COLUMNS)].to_numpy(), want, atol=1e-5)
    norms = np.linalg.norm(z[list(AETHER_COLUMNS)].to_numpy(), axis=1)
    np.testing.assert_allclose(norms[np.isfinite(norms)], 1.0, atol=1e-4)


def test_model_encodes_a_grid_as_encode_writes(trained) -> None:
    city_dir, _, _, model = trained
    grid = gpd.read_parquet(city_dir / "grid_embeddings_50m.parquet")
    z = model.encode(grid)
    written = pd.read_parquet(city_dir / "aether" / model.name / "grid_50m.parquet")
    assert z["cell_id"].tolist() == written["cell_id"].tolist()
    np.testing.assert_allclose(z[list(AETHER_COLUMNS)].to_numpy(),
                               written[list(AETHER_COLUMNS)].to_numpy(), atol=1e-5)
    with pytest.raises(TableError, match="encode needs"):
        model.encode(grid.drop(columns=["cell_id"]))


def test_query_ranks_cells_by_cosine(trained) -> None:
    city_dir, names, data_root, model = trained
    top = aether.query("coffee shop", city="Helsinki", model=names[1], k=5, data_dir=data_root)
    assert isinstance(top, gpd.GeoDataFrame) and len(top) == 5
    assert top["rank"].tolist() == [1, 2, 3, 4, 5] and set(top["model"]) == {names[1]}
    # the oracle: cosine of the stored grid vectors with the query's vector
    grid = pd.read_parquet(city_dir / "aether" / names[1] / "grid_50m.parquet")
    q = model.encode_text(["coffee shop"])[0]
    scores = grid[list(AETHER_COLUMNS)].to_numpy() @ q
    best = grid["cell_id"].to_numpy()[np.argsort(np.where(np.isnan(scores), -np.inf, -scores))]
    assert top["cell_id"].tolist() == best[:5].tolist()
    np.testing.assert_allclose(top["score"], np.sort(scores[np.isfinite(scores)])[::-1][:5],
                               atol=1e-5)
    many = aether.query(["hotel", "bar"], city="Helsinki", k=3, data_dir=data_root)
    assert many["query"].tolist() == ["hotel"] * 3 + ["bar"] * 3


def test_model_search_and_results_print_in_a_line(trained) -> None:
    """In a notebook a Model, a Search and a result print what they are, not a torch dump."""
    _, names, data_root, model = trained
    assert repr(model) == (f"Model({names[1]!r}: 128-d, base radius {model.base_radius_m:g} m, "
                           f"text {model.run.text_model})")
    found = aether.search(["coffee shop", "hotel"], city="Helsinki", model=names[1], k=3,
                          data_dir=data_root)
    n = len(found.index.grid)
    assert repr(found) == (f"Search(model {names[1]!r}, {n:,} cells, queries 'coffee shop', "
                           "'hotel'; .table() for the answers)")
    res = found.results[0]
    assert repr(res) == (f"QueryResult('coffee shop': {n:,} cells scored, top 3, best "
                         f"{res.top['score'].iloc[0]:.3f} at {res.top['cell_id'].iloc[0]})")
    assert all("Linear(" not in repr(x) and "\n" not in repr(x) for x in (model, found, res))
    # what a notebook user reaches from them: the run, the index, the served app
    run = model.run
    assert repr(run) == (f"ModelRun({names[1]!r}: 128-d, preset {run.preset}, base radius "
                         f"{run.base_radius_m:g} m, {run.path})")
    assert repr(found.index) == (f"CityIndex({n:,} cells × 128, {len(found.index.pois):,} "
                                 f"POIs, {found.index.crs})")
    app = aether.api.web_app("Helsinki", [names[1]], data_dir=data_root)
    panel = app.panels[names[1]]
    assert repr(app).startswith(f"CityApp('Helsinki': panels {names[1]}, ")
    assert repr(panel) == f"Panel({names[1]!r}: {panel.about}; {len(panel.index.grid):,} cells)"
    for x in (run, found.index, app, panel):
        assert "Linear(" not in repr(x) and "\n" not in repr(x) and len(repr(x)) < 300, repr(x)


def test_the_maps_extra_declares_what_explore_needs() -> None:
    """GeoDataFrame.explore() imports folium, matplotlib and mapclassify: all three are in
    the ``maps`` extra (mapclassify was in none, so explore() failed with the extras)."""
    import re
    import tomllib

    from support import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in extras["maps"]}
    assert {"folium", "matplotlib", "mapclassify"} <= names, names


def test_results_explore_to_a_folium_map(trained) -> None:
    """``.explore()`` on a query's answers and on POIs (with the declared extras): a folium
    map with the rows on it."""
    import folium

    city_dir, names, data_root, _ = trained
    top = aether.query("coffee shop", city="Helsinki", model=names[1], k=5, data_dir=data_root)
    m = top.explore(column="score", tooltip=["rank", "score", "cell_id"])
    assert isinstance(m, folium.Map)
    html = m.get_root().render()
    assert html.count('"cell_id"') >= 1 and str(top["cell_id"].iloc[0]) in html
    pois = gpd.read_parquet(city_dir / "pois.parquet").head(20)
    m2 = pois.explore(column="top_category")  # categories: another of explore()'s paths
    assert isinstance(m2, folium.Map) and str(pois["poi_id"].iloc[0]) in m2.get_root().render()


def test_train_returns_a_run_model_load_reads(sample_runs) -> None:
    city_dir, _, data_root = sample_runs
    path = aether.train("Helsinki", preset="default", run="api_1", epochs=1, data_dir=data_root)
    assert path == city_dir / "models" / "api_1" and (path / "model.safetensors").is_file()
    model = aether.Model.load(path)
    assert model.name == "api_1" and model.encode_text(["cafe"]).shape == (1, 128)
    with pytest.raises(ModelError, match="no trained model") as e:
        aether.Model.load(city_dir / "models" / "nope")
    runs = sorted(p.name for p in (city_dir / "models").iterdir()
                  if p.is_dir() and not p.name.startswith("."))
    assert len(runs) >= 3 and f"(runs here: {', '.join(runs)})" in str(e.value)
    assert "`aether.train()`" in str(e.value)  # the Python call, not the command


def test_python_api_errors_name_keyword_arguments_and_the_cli_names_flags(cli,
                                                                         tmp_path) -> None:
    """One hint, rendered per surface: ``pois=FILE and tiles=DIR`` from Python, ``--pois FILE
    and --tiles DIR`` from the command line, for the same mistake."""
    from aether.errors import PlaceError

    with pytest.raises(PlaceError) as e:
        aether.pois("Nowhere", offline=True, data_dir=tmp_path)
    assert "give pois=FILE and tiles=DIR" in str(e.value) and "--" not in str(e.value)
    assert "city=Helsinki with offline=True" in str(e.value)
    r = cli("extract", "--city", "Nowhere", "--offline", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "give --pois FILE and --tiles DIR" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
