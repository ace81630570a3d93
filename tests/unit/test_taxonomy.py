"""The taxonomy table: OSM tags → category / top_category → the method's text."""

from __future__ import annotations

import csv
from importlib import resources

import pytest

from aether.pois.taxonomy import (
    OTHER_TOP,
    classify,
    classify_values,
    load_taxonomy,
    map_category,
    poi_tags,
    poi_text,
)

REQUIRED_KEYS = ("amenity", "shop", "office", "tourism", "leisure", "healthcare", "craft",
                 "public_transport", "railway", "historic", "sport")


def test_table_covers_the_required_keys_and_is_well_formed():
    text = resources.files("aether").joinpath("data/taxonomy.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert {r["key"] for r in rows} >= set(REQUIRED_KEYS)
    pairs = [(r["key"], r["value"]) for r in rows]
    assert len(pairs) == len(set(pairs)), "duplicate key,value rows"
    assert all(r["top_category"] for r in rows)
    assert all(r["category"] or r["value"] == "*" for r in rows)
    assert load_taxonomy().keys[:2] == ("amenity", "shop")


@pytest.mark.parametrize(("tags", "expected"), [
    ({"amenity": "restaurant", "name": "X"}, ("restaurant", "food and drink")),
    ({"shop": "clothes"}, ("clothes shop", "retail")),
    ({"shop": "bicycle"}, ("bicycle", "retail")),  # wildcard: the value itself
    ({"craft": "clock_maker"}, ("clock maker", "craft")),
    ({"railway": "station"}, ("railway station", "transport")),
    ({"healthcare": "blood_donation"}, ("blood donation", "health care")),
    ({"sport": "yoga"}, ("yoga", "sport")),
    ({"historic": "memorial"}, ("memorial", "historic site")),
    ({"public_transport": "station"}, ("public transport station", "transport")),
    ({"shop": "deli", "amenity": "restaurant"}, ("restaurant", "food and drink")),
    ({"shop": "bakery;cafe"}, ("bakery", "food and drink")),  # first of a multi-value
    ({"shop": "bakery;cafe;deli"}, ("bakery", "food and drink")),
    # an exact row of a later key beats a wildcard of an earlier key
    ({"amenity": "fancy_thing", "tourism": "hotel"}, ("hotel", "accommodation")),
])
def test_classify(tags, expected):
    assert classify(tags) == expected


def test_other_sources_codes_are_classified_by_the_first_known_osm_value():
    assert classify_values(["nope", " Cafe "]) == ("cafe", "food and drink")
    assert classify_values(["FAST_FOOD", "cafe"]) == ("fast food", "food and drink")
    assert classify_values(["nope", "also not"]) is None


@pytest.mark.parametrize(("value", "expected"), [
    ("Clothes Shop", ("clothes shop", "retail")),  # a category name of the table
    ("Fast_Food", ("fast food", "food and drink")),  # an OSM value, as words
    ("clothes", ("clothes", "retail")),  # an OSM value: the user's words, the table's top
    ("  weird__thing ", ("weird thing", OTHER_TOP)),  # unknown: kept, under OTHER_TOP
])
def test_a_users_own_category_is_mapped_where_the_table_knows_it(value, expected):
    assert map_category(value) == expected


@pytest.mark.parametrize("tags", [
    {"railway": "rail"}, {"public_transport": "stop_position"}, {"highway": "bus_stop"},
    {"amenity": "no"}, {"tourism": "Elielinaukio"}, {"sport": "yes"}, {"name": "Only a name"},
])
def test_not_a_poi(tags):
    assert classify(tags) is None


def test_poi_text_template():
    assert poi_text("cafe", "food and drink", "Kappeli") == (
        "A place of cafe, a type of food and drink, named Kappeli.")
    for no_name in (None, "", "  ", float("nan")):
        assert poi_text("bench", "street furniture", no_name) == (
            "A place of bench, a type of street furniture.")


def test_poi_tags_select_what_the_taxonomy_classifies():
    tags = poi_tags()
    assert tags["amenity"] is True and tags["shop"] is True
    assert tags["railway"] == ["halt", "station", "subway_entrance", "tram_stop"]
    assert set(tags) == set(REQUIRED_KEYS)
