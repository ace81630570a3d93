"""Labelled places of ``aether serve``: positives and negatives as files a person keeps.

The page holds the labels (in its URL); this module owns their file formats, both ways, so
the page never parses a file itself: GeoJSON points or CSV rows, each with ``label``
(``positive``/``negative``), longitude and latitude, and the grid cell they fall in. Reading
checks everything before anything is used: a bad file is one typed line, never half a list.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from aether.errors import InputError
from aether.query.similar import parse_lonlat

#: Labels one request may carry: bounds the URL, the lookups and the classifier's work.
MAX_LABELS = 500
#: Bytes an imported labels file may have (500 labels fit in a tenth of it).
MAX_LABEL_BYTES = 1_000_000
KINDS = ("positive", "negative")
CSV_COLUMNS = ("label", "lon", "lat", "cell_id")


@dataclass(frozen=True)
class Labels:
    """Positive and negative places, (lon, lat) each."""

    pos: list[tuple[float, float]]
    neg: list[tuple[float, float]]

    @classmethod
    def parse(cls, at: list[str], not_at: list[str]) -> Labels:
        """The labels of a request's ``at=`` and ``not=`` (LON,LAT each), checked and capped."""
        check_count(len(at) + len(not_at))
        return cls([parse_lonlat(a) for a in at], [parse_lonlat(a) for a in not_at])

    def rows(self) -> list[tuple[str, float, float]]:
        return ([("positive", lon, lat) for lon, lat in self.pos]
                + [("negative", lon, lat) for lon, lat in self.neg])

    def params(self) -> dict[str, list[str]]:
        """The labels as the API's ``at``/``not`` values (what the page puts in its URL)."""
        return {"at": [f"{lon:.6f},{lat:.6f}" for lon, lat in self.pos],
                "not": [f"{lon:.6f},{lat:.6f}" for lon, lat in self.neg]}


def check_count(n: int) -> None:
    if n > MAX_LABELS:
        raise InputError(f"{n} labelled places", f"label at most {MAX_LABELS} places")


def labels_geojson(labels: Labels, cell_ids: list[str], credits: list[str]) -> dict[str, Any]:
    """The labels as GeoJSON points (label, cell_id), with the map credits."""
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
              "properties": {"label": kind, "cell_id": cell}}
             for (kind, lon, lat), cell in zip(labels.rows(), cell_ids, strict=True)]
    return {"type": "FeatureCollection", "features": feats, "attribution": credits}


def labels_csv(labels: Labels, cell_ids: list[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for (kind, lon, lat), cell in zip(labels.rows(), cell_ids, strict=True):
        w.writerow([kind, f"{lon:.6f}", f"{lat:.6f}", cell])
    return out.getvalue()


def read_labels(data: bytes) -> Labels:
    """Labels from a GeoJSON or CSV file (told apart by its first character); InputError,
    naming the first bad entry, for anything else."""
    if len(data) > MAX_LABEL_BYTES:
        raise InputError(f"the labels file is {len(data):,} bytes",
                         f"import at most {MAX_LABEL_BYTES:,} bytes ({MAX_LABELS} labels)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the labels file is not UTF-8 text",
                         "import a GeoJSON or CSV file exported by aether serve") from None
    rows = _geojson_rows(text) if text.lstrip().startswith("{") else _csv_rows(text)
    check_count(len(rows))
    pos: list[tuple[float, float]] = []
    neg: list[tuple[float, float]] = []
    for i, (kind, lonlat) in enumerate(rows, 1):
        if kind not in KINDS:
            raise InputError(f"label {i} is {kind!r}", "label each place positive or negative")
        try:
            (pos if kind == "positive" else neg).append(parse_lonlat(lonlat))
        except InputError as e:
            raise InputError(f"label {i}: {e.message}", "give LON,LAT in degrees") from None
    if not pos and not neg:
        raise InputError("the labels file holds no labels",
                         "import a GeoJSON or CSV file exported by aether serve")
    return Labels(pos, neg)


def _geojson_rows(text: str) -> list[tuple[Any, str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"the labels file is not JSON ({e.msg}, line {e.lineno})",
                         "import a GeoJSON or CSV file exported by aether serve") from None
    feats = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(feats, list):
        raise InputError("the labels file is no GeoJSON FeatureCollection",
                         "import a GeoJSON or CSV file exported by aether serve")
    check_count(len(feats))
    rows = []
    for i, f in enumerate(feats, 1):
        geom = f.get("geometry") if isinstance(f, dict) else None
        props = f.get("properties") if isinstance(f, dict) else None
        xy = geom.get("coordinates") if isinstance(geom, dict) else None
        if (not isinstance(geom, dict) or geom.get("type") != "Point"
                or not isinstance(props, dict) or not isinstance(xy, list) or len(xy) != 2
                or not all(isinstance(v, int | float) for v in xy)):
            raise InputError(f"label {i} is not a Point with a label property",
                             "import a GeoJSON or CSV file exported by aether serve")
        rows.append((props.get("label"), f"{xy[0]},{xy[1]}"))
    return rows


def _csv_rows(text: str) -> list[tuple[Any, str]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"label", "lon", "lat"} <= set(reader.fieldnames):
        raise InputError("the labels file has no label, lon and lat columns",
                         "import a GeoJSON or CSV file exported by aether serve")
    return [(r["label"], f"{r['lon']},{r['lat']}") for r in reader]
