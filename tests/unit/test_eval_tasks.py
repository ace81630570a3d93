"""Task files and label assignment on tiny tables: what a task file may say, where its label
table is found, and which unit gets which target (polygon under the centre, points in the
cell or radius, majority / shares / mean), with every threshold at its edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aether.errors import ConfigError, TableError
from aether.evaluation import tasks
from aether.evaluation.tasks import ProbeTask

CRS = "EPSG:32635"
X0, Y0 = 500000.0, 6670000.0


def _write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASIC = "name: lu\nkind: classification\nlabels: lab.parquet\ncolumn: landuse\n"


def test_a_task_file_with_defaults(tmp_path):
    p = _write(tmp_path, BASIC)
    task = tasks.load_task(p)
    assert task == ProbeTask(name="lu", kind="classification", labels="lab.parquet",
                             column="landuse", source=p)
    assert (task.unit, task.cell_m, task.radius_m, task.min_count, task.min_class_units,
            task.holdout, task.block_m, task.classes, task.cell) == (
        "grid", 100.0, 0.0, 1, 10, False, 250.0, {}, None)
    assert task.grid_cell.label == "100m"
    assert tasks.load_task(str(p)) == task


def test_a_task_file_with_every_key(tmp_path):
    p = _write(tmp_path, BASIC + "unit: poi\ncell_m: 50\nradius_m: 30\nmin_count: 2\n"
               "min_class_units: 3\nholdout: true\nblock_m: 500\n"
               "classes: {retail: commercial}\n")
    task = tasks.load_task(p)
    assert (task.unit, task.cell_m, task.radius_m, task.min_count, task.min_class_units,
            task.holdout, task.block_m, task.classes) == (
        "poi", 50, 30, 2, 3, True, 500, {"retail": "commercial"})
    assert task.grid_cell.label == "50m"
    assert tasks.load_task(p, cell="h3:9").grid_cell.label == "h3r9"
    assert tasks.load_task(p, cell="200m").cell == "200m"
    assert tasks.load_task(_write(tmp_path, BASIC + "cell: 20m\n")).grid_cell.label == "20m"


def test_a_packaged_task_by_name():
    task = tasks.load_task("helsinki_landuse")
    assert task.source == tasks.TASKS_DIR / "helsinki_landuse.yaml"
    assert task.name == "helsinki_landuse" and task.cell_m == 50
    assert tasks.load_task(Path("somewhere/helsinki_poi_mix")).name == "helsinki_poi_mix"


def _config_error(p, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        tasks.load_task(p, **kw)
    return e.value


def test_bad_task_files_are_named(tmp_path):
    e = _config_error(tmp_path / "nope.yaml")
    assert e.message == f"task file {tmp_path / 'nope.yaml'} not found"
    assert e.hint == "packaged tasks: helsinki_landuse, helsinki_poi_mix"
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    e = _config_error(p)
    assert e.message == "latin1.yaml:1: task file is not UTF-8 text (byte 9)"
    p = _write(tmp_path, "- a\n- b\n")
    e = _config_error(p)
    assert (e.message, e.hint) == (f"task file {p} is not a mapping",
                                   "see aether/data/tasks/*.yaml")
    keys = ("block_m, cell, cell_m, classes, column, holdout, kind, labels, min_class_units, "
            "min_count, name, radius_m, unit")
    e = _config_error(_write(tmp_path, BASIC + "colour: red\nsize: 3\n"))
    assert e.message.endswith(": unknown key(s) colour, size") and e.hint == f"keys: {keys}"
    e = _config_error(_write(tmp_path, "name: a\nkind: regression\n"))
    assert e.message.endswith(": missing labels, column") and e.hint == f"keys: {keys}"
    e = _config_error(_write(tmp_path, BASIC + "source: x\n"))
    assert "unknown key(s) source" in e.message
    for k in ("name", "kind", "labels", "column"):
        text = "".join(line + "\n" for line in BASIC.splitlines() if not line.startswith(k))
        assert _config_error(_write(tmp_path, text)).message.endswith(f": missing {k}")


def test_bad_values_are_named(tmp_path):
    for extra in ("cell_m: wide\n", "radius_m: far\n", "min_count: many\n", "cell: 7 leagues\n",
                  "classes: [a, b]\n"):
        p = _write(tmp_path, BASIC + extra)
        e = _config_error(p)
        assert e.message.startswith(f"task file {p}: ") and e.hint == (
            "see aether/data/tasks/*.yaml"), extra
    assert "task file" in _config_error(_write(tmp_path, BASIC), cell="h3:99").message
    e = _config_error(_write(tmp_path, BASIC.replace("classification", "ranking")))
    assert e.message.endswith(": kind 'ranking' / unit 'grid'")
    assert e.hint == ("kind is one of classification, distribution, regression; unit one of "
                      "grid, poi")
    e = _config_error(_write(tmp_path, BASIC + "unit: block\n"))
    assert e.message.endswith(": kind 'classification' / unit 'block'")
    for kind in ("distribution", "regression"):
        assert tasks.load_task(_write(tmp_path, BASIC.replace("classification", kind))).kind == (
            kind)


def test_the_label_table_is_found(tmp_path):
    city = tmp_path / "city"
    beside = tmp_path / "tasks"
    (city / "labels").mkdir(parents=True)
    beside.mkdir()
    task_file = _write(beside, BASIC)
    task = ProbeTask("lu", "classification", "labels/a.parquet", "c", source=task_file)
    (beside / "labels").mkdir()
    (beside / "labels" / "a.parquet").write_text("x")
    assert tasks.label_path(task, city) == beside / "labels" / "a.parquet"
    (city / "labels" / "a.parquet").write_text("x")
    assert tasks.label_path(task, city) == city / "labels" / "a.parquet"
    absolute = ProbeTask("lu", "classification", str(beside / "labels" / "a.parquet"), "c")
    assert tasks.label_path(absolute, city) == beside / "labels" / "a.parquet"
    with pytest.raises(TableError) as e:
        tasks.label_path(ProbeTask("lu", "classification", "b.parquet", "c"), city)
    assert e.value.message == "label table b.parquet of task lu not found"
    assert e.value.hint == f"looked in {city} and beside the task file"


def _points_gdf(xy, values, column="landuse", crs=CRS):
    import geopandas as gpd

    return gpd.GeoDataFrame({column: values},
                            geometry=gpd.points_from_xy([X0 + a for a, _ in xy],
                                                        [Y0 + b for _, b in xy]), crs=crs)


def test_read_labels_checks_and_renames(tmp_path):
    df = _points_gdf([(0, 0), (10, 0), (20, 0), (30, 0)], ["retail", None, "grass", "water"])
    df.assign(note=[None, "a", "b", "c"]).to_parquet(tmp_path / "lab.parquet")
    task = ProbeTask("lu", "classification", "lab.parquet", "landuse")
    got = tasks.read_labels(task, tmp_path)
    assert got.crs.to_epsg() == 4326
    assert got["landuse"].tolist() == ["retail", "grass", "water"]
    renamed = tasks.read_labels(ProbeTask("lu", "classification", "lab.parquet", "landuse",
                                          classes={"retail": "shop", "grass": "green"}), tmp_path)
    assert renamed["landuse"].tolist() == ["shop", "green"]
    assert renamed.geometry.x.iloc[0] == pytest.approx(got.geometry.x.iloc[0])
    with pytest.raises(TableError) as e:
        tasks.read_labels(ProbeTask("lu", "classification", "lab.parquet", "kind"), tmp_path)
    assert (e.value.message, e.value.hint) == ("label table lab.parquet has no column 'kind'",
                                               "columns: landuse, note")
    with pytest.raises(TableError) as e:
        tasks.read_labels(ProbeTask("lu", "classification", "lab.parquet", "landuse",
                                    classes={"road": "x"}), tmp_path)
    assert e.value.message == "label table lab.parquet has no usable rows for lu"
    assert e.value.hint == "check the column and the classes mapping"
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(TableError) as e:
        tasks.read_labels(ProbeTask("lu", "classification", "bad.parquet", "landuse"), tmp_path)
    assert e.value.message.startswith(f"label table {tmp_path / 'bad.parquet'} is not "
                                      "GeoParquet: ")
    assert e.value.hint == "labels need a geometry column (points or polygons)"
    assert e.value.message.endswith(f": {type(e.value.__cause__).__name__}")
    assert "NoneType" not in e.value.message


def _grid(n=3, size=100.0):
    """n x n square cells (EPSG:4326 polygons, as grids are stored) and their UTM centres."""
    import geopandas as gpd
    from shapely.geometry import box

    cells, xs, ys = [], [], []
    for j in range(n):
        for i in range(n):
            x, y = X0 + i * size, Y0 + j * size
            cells.append(box(x, y, x + size, y + size))
            xs.append(x + size / 2)
            ys.append(y + size / 2)
    g = gpd.GeoDataFrame({"x": xs, "y": ys}, geometry=cells, crs=CRS)
    return g.to_crs("EPSG:4326").assign(x=xs, y=ys)


def _task(kind="classification", **kw):
    return ProbeTask("t", kind, "lab.parquet", "landuse", **{"min_class_units": 1, **kw})


def _polys(rects, values):
    import geopandas as gpd
    from shapely.geometry import box

    return gpd.GeoDataFrame({"landuse": values},
                            geometry=[box(X0 + a, Y0 + b, X0 + c, Y0 + d) for a, b, c, d in rects],
                            crs=CRS).to_crs("EPSG:4326")


def test_polygons_give_the_class_under_the_centre_the_smallest_first():
    units = _grid()  # centres at 50, 150, 250 on both axes; unit = 3 * row + column
    labels = _polys([(0, 0, 300, 120), (100, 0, 200, 100), (0, 200, 120, 300)],
                    ["green", "retail", "water"])
    got = tasks.assign(_task(), units, labels, CRS)
    # units 0 and 2 in the big polygon, 1 in the small one inside it; 6 in water
    assert got.index.tolist() == [0, 1, 2, 6]
    assert got.classes == ["green", "retail", "water"]
    assert got.y.tolist() == [0, 1, 0, 2] and got.y.dtype == np.int64
    # the smaller polygon wins whatever the table's order
    first = tasks.assign(_task(), units, labels.iloc[[1, 0, 2]], CRS)
    assert (first.index.tolist(), first.y.tolist()) == ([0, 1, 2, 6], [0, 1, 0, 2])
    # min_class_units drops the rarer classes; fewer than two left is an error
    got = tasks.assign(_task(min_class_units=2), units,
                       _polys([(0, 0, 300, 120), (100, 0, 200, 100), (0, 200, 120, 300),
                               (200, 200, 300, 300)], ["green", "retail", "water", "water"]),
                       CRS)
    assert (got.index.tolist(), got.y.tolist(), got.classes) == ([0, 2, 6, 8], [0, 0, 1, 1],
                                                                 ["green", "water"])
    with pytest.raises(TableError) as e:
        tasks.assign(_task(min_class_units=3), units, labels, CRS)
    assert e.value.message == "task t: fewer than two classes with 3 units"
    assert e.value.hint == "lower min_class_units or the cell"


def test_polygon_values_and_the_refusals():
    units = _grid()
    labels = _polys([(0, 0, 300, 120), (100, 0, 200, 100)], [2.0, 7.5])
    got = tasks.assign(_task("regression"), units, labels, CRS)
    assert got.index.tolist() == [0, 1, 2] and got.y.tolist() == [2.0, 7.5, 2.0]
    assert got.y.dtype == np.float64 and got.classes == []
    with pytest.raises(ConfigError) as e:
        tasks.assign(_task("distribution"), units, labels, CRS)
    assert e.value.message == "task t: distributions need point labels"
    assert e.value.hint == "use kind classification or regression for polygons"
    with pytest.raises(TableError) as e:
        tasks.assign(_task("regression"), units, _polys([(900, 900, 950, 950)], [1.0]), CRS)
    assert e.value.message == "task t: no unit has a label"
    assert e.value.hint == "check the label table's area"


def _pts(xy, values):
    return _points_gdf(xy, values).to_crs("EPSG:4326")


def test_points_in_grid_cells():
    units = _grid()
    # unit 0: shop, shop, park; unit 4: park; unit 8: park, shop, park; unit 5: one shop
    labels = _pts([(10, 10), (20, 30), (90, 90), (150, 150), (210, 210), (220, 220),
                   (290, 230), (250, 150)],
                  ["shop", "shop", "park", "park", "park", "shop", "park", "shop"])
    got = tasks.assign(_task(), units, labels, CRS)
    assert got.index.tolist() == [0, 4, 5, 8]
    assert got.classes == ["park", "shop"] and got.y.tolist() == [1, 0, 1, 0]
    # a point put on the edge of units 0 and 1 (in UTM) counts for neither
    edge = pd.concat([labels, _pts([(100, 50)], ["park"])], ignore_index=True)
    again = tasks.assign(_task(), units, edge, CRS)
    assert (again.index.tolist(), again.y.tolist()) == ([0, 4, 5, 8], [1, 0, 1, 0])
    # a radius, however small, replaces the cell: within half a metre of a centre
    near = tasks.assign(_task("distribution", radius_m=0.5), units,
                        _pts([(150.2, 150), (10, 10), (250, 250)], ["a", "b", "b"]), CRS)
    assert near.index.tolist() == [4, 8] and near.y.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # at least two points per unit
    got = tasks.assign(_task(min_count=2), units, labels, CRS)
    assert got.index.tolist() == [0, 8] and got.y.tolist() == [1, 0]
    got = tasks.assign(_task(min_count=3, kind="distribution"), units, labels, CRS)
    assert got.index.tolist() == [0, 8] and got.classes == ["park", "shop"]
    np.testing.assert_allclose(got.y, [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    assert got.y.dtype == np.float64
    vals = _pts([(10, 10), (20, 30), (90, 90), (150, 150)], [1.0, 2.0, 6.0, 5.0])
    got = tasks.assign(_task("regression"), units, vals, CRS)
    assert got.index.tolist() == [0, 4] and got.y.tolist() == [3.0, 5.0]


def test_points_within_a_radius_of_the_centre():
    units = _grid()
    # from unit 4's centre (150, 150): 30 m, 45 m (55 m from unit 1's), 60 m (40 m from
    # unit 7's); (10, 10) is 57 m from unit 0's centre
    labels = _pts([(180, 150), (150, 105), (150, 210), (10, 10)], ["a", "b", "b", "a"])
    got = tasks.assign(_task("distribution", radius_m=50), units, labels, CRS)
    assert got.index.tolist() == [4, 7] and got.classes == ["a", "b"]
    assert got.y.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    got = tasks.assign(_task("distribution", radius_m=65), units, labels, CRS)
    assert got.index.tolist() == [0, 1, 4, 7]
    np.testing.assert_allclose(got.y, [[1, 0], [0, 1], [1 / 3, 2 / 3], [0, 1]])
    got = tasks.assign(_task(radius_m=65), units, labels, CRS)
    assert (got.index.tolist(), got.y.tolist()) == ([0, 1, 4, 7], [0, 1, 1, 1])
    with pytest.raises(TableError):  # only unit 4 has two points: one class
        tasks.assign(_task(radius_m=65, min_count=2), units, labels, CRS)
    # POI units: a point within 1 m of the centre (radius 0 means the POI itself)
    on = _pts([(150.5, 150), (50, 52), (250, 250)], ["a", "b", "b"])
    got = tasks.assign(_task("distribution", unit="poi"), units, on, CRS)
    assert got.index.tolist() == [4, 8] and got.y.tolist() == [[1.0, 0.0], [0.0, 1.0]]
