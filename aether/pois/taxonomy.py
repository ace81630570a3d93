"""OSM tags → (category, top_category) → POI text, from the table in ``data/taxonomy.csv``.

The taxonomy is data so it can be read, reviewed and extended without touching code. Each
row is ``key,value,category,top_category``; a ``*`` value accepts any lowercase OSM value of
that key and uses the value itself (underscores as spaces) as the category. Keys are tried
in the order they first appear in the table, exact values before wildcards, so
``amenity=restaurant`` + ``shop=deli`` is a restaurant.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

TEXT_TEMPLATE = "A place of {category}, a type of {top_category}, named {name}."
TEXT_TEMPLATE_UNNAMED = "A place of {category}, a type of {top_category}."
WILDCARD = "*"
OTHER_TOP = "point of interest"  # top category of users' categories the taxonomy lacks
_OSM_VALUE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Taxonomy:
    """Lookup tables built from the CSV: exact (key, value) rows and per-key wildcards."""

    keys: tuple[str, ...]
    exact: Mapping[tuple[str, str], tuple[str, str]]
    wildcard: Mapping[str, str]  # key -> top_category

    def classify(self, tags: Mapping[str, str]) -> tuple[str, str] | None:
        """(category, top_category) of an OSM object's tags, or None when it is no POI."""
        values = {k: _first_value(tags[k]) for k in self.keys if k in tags}
        for key, value in values.items():
            hit = self.exact.get((key, value))
            if hit:
                return hit
        for key, value in values.items():
            if key in self.wildcard and _OSM_VALUE.match(value) and value not in ("no", "yes"):
                return humanise(value), self.wildcard[key]
        return None


def _first_value(value: str) -> str:
    """OSM multi-values ``a;b`` count as their first value."""
    return value.split(";", 1)[0].strip()


@cache
def load_taxonomy() -> Taxonomy:
    """The packaged taxonomy (read once)."""
    text = resources.files("aether").joinpath("data/taxonomy.csv").read_text(encoding="utf-8")
    keys: dict[str, None] = {}
    exact: dict[tuple[str, str], tuple[str, str]] = {}
    wildcard: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines()):
        key, value = row["key"], row["value"]
        keys.setdefault(key, None)
        if value == WILDCARD:
            wildcard[key] = row["top_category"]
        else:
            exact[(key, value)] = (row["category"], row["top_category"])
    return Taxonomy(keys=tuple(keys), exact=exact, wildcard=wildcard)


def poi_tags() -> dict[str, bool | list[str]]:
    """The OSM tag filter that selects every POI the taxonomy can classify (osmnx ``tags``)."""
    tax = load_taxonomy()
    tags: dict[str, bool | list[str]] = {}
    for key in tax.keys:
        if key in tax.wildcard:
            tags[key] = True
        else:
            tags[key] = sorted(v for k, v in tax.exact if k == key)
    return tags


def classify(tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(category, top_category) for OSM tags through the packaged taxonomy."""
    return load_taxonomy().classify(tags)


def classify_values(values: list[str]) -> tuple[str, str] | None:
    """(category, top_category) of the first category code the taxonomy knows as an OSM value
    of any key (``cafe`` → amenity=cafe): how other sources' categories share the table."""
    by_value = _by_value()
    for v in values:
        hit = by_value.get(v.strip().lower())
        if hit:
            return hit
    return None


@cache
def _by_value() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for (_, value), hit in load_taxonomy().exact.items():
        out.setdefault(value, hit)
    return out


def humanise(value: str) -> str:
    """An OSM value or a user's category code as words: ``fast_food`` → ``fast food``."""
    return " ".join(value.replace("_", " ").split()).lower()


def map_category(value: str) -> tuple[str, str]:
    """A user's own category → (category, top_category) through the taxonomy where it knows
    the category (as an OSM value or a category name), else under OTHER_TOP."""
    words = humanise(value)
    for (_, osm_value), (category, top) in load_taxonomy().exact.items():
        if words == category.lower():
            return category, top
        if words == humanise(osm_value):
            return words, top
    return words, OTHER_TOP


def poi_text(category: str, top_category: str, name: str | None = None) -> str:
    """The method's POI sentence; without the name clause when there is no name."""
    if not isinstance(name, str) or not name.strip():  # None, NaN, pd.NA or blank
        return TEXT_TEMPLATE_UNNAMED.format(category=category, top_category=top_category)
    return TEXT_TEMPLATE.format(category=category, top_category=top_category,
                                name=name.strip())
