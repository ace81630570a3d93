"""Typed source options: one pydantic model per source, unknown keys and bad values refused."""

from __future__ import annotations

import math

import pytest

from aether.embeddings import get_source
from aether.embeddings.base import SOURCES, SourceOptions, source_options
from aether.errors import InputError


def test_misspelt_option_is_refused_naming_it_and_the_valid_ones(tmp_path) -> None:
    with pytest.raises(InputError) as e:
        get_source("ee", workdir=tmp_path, ee_bacth=5)
    msg = str(e.value)
    assert "'ee_bacth'" in msg and "ee_batch" in msg and "ee_concurrency" in msg
    assert "\n" not in msg


def test_the_option_given_is_the_option_used(tmp_path) -> None:
    src = get_source("ee", workdir=tmp_path, ee_batch=5, ee_concurrency=3, ee_poll=0.5)
    assert (src.batch_size, src.concurrency, src.poll_s) == (5, 3, 0.5)
    assert get_source("xee", xee_chunk=64).chunk == 64
    assert get_source("cog", tiles=tmp_path).tiles == str(tmp_path)


@pytest.mark.parametrize(("name", "options", "needle"), [
    ("ee", {"ee_batch": 0}, "ee_batch"),
    ("ee", {"ee_batch": 10**9}, "ee_batch"),
    ("ee", {"ee_concurrency": -1}, "ee_concurrency"),
    ("ee", {"ee_poll": math.nan}, "ee_poll"),
    ("ee", {"ee_backoff": math.inf}, "ee_backoff"),
    ("ee", {"ee_batch": 2.5}, "ee_batch"),
    ("ee", {"tiles": "x"}, "'tiles'"),
    ("xee", {"xee_chunk": 0}, "xee_chunk"),
    ("xee", {"ee_batch": 5}, "'ee_batch'"),
    ("cog", {"ee_url": "http://x"}, "'ee_url'"),
])
def test_bad_values_are_refused_not_replaced(tmp_path, name, options, needle) -> None:
    with pytest.raises(InputError, match=needle):
        get_source(name, workdir=tmp_path, **options)


def test_registry_holds_a_forbidding_model_and_a_factory_per_source() -> None:
    assert set(SOURCES) == {"cog", "ee", "xee"}
    for name, entry in SOURCES.items():
        model = entry.options_model()
        assert issubclass(model, SourceOptions), name
        assert model.model_config.get("extra") == "forbid", name
        assert callable(entry.create())
    assert source_options("ee", {"ee_batch": "7"}).ee_batch == 7  # run files give strings too


def test_unknown_source() -> None:
    with pytest.raises(InputError, match="unknown source 'nope'"):
        get_source("nope")


def test_poi_options_are_typed_too(tmp_path) -> None:
    from aether.errors import PoiError
    from aether.pois.load import load_pois

    f = tmp_path / "p.csv"
    f.write_text("title,kind,lon,lat\nKahvila,cafe,24.94,60.17\n")
    with pytest.raises(PoiError, match=r"unknown POI option 'name_colum'.*name_column"):
        load_pois(f"file:{f}", name_colum="title")
    df = load_pois(f"file:{f}", name_column="title", category_column="kind")
    assert df["name"].tolist() == ["Kahvila"]
