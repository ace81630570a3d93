"""Where the COG source looks: the tiles setting's precedence, index and tile locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether import settings
from aether.io.tiles import index_location, resolve_tile_path

PUBLIC = "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet"


def test_tiles_flag_then_env_then_the_public_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AETHER_TILES", raising=False)
    assert settings.tiles() == PUBLIC
    monkeypatch.setenv("AETHER_TILES", "/data/aef")
    assert settings.tiles() == "/data/aef"
    assert settings.tiles("https://example.org/aef/") == "https://example.org/aef/"


def test_a_directory_stands_for_its_index(tmp_path: Path) -> None:
    assert index_location("https://h/aef/v1/annual/") == "https://h/aef/v1/annual/aef_index.parquet"
    assert index_location("https://h/aef/v1/annual") == "https://h/aef/v1/annual/aef_index.parquet"
    assert index_location("https://h/x/my.parquet") == "https://h/x/my.parquet"
    assert index_location(tmp_path) == str(tmp_path / "aef_index.parquet")


def test_tile_paths_resolve_against_the_index() -> None:
    base = "https://h/aef/v1/annual"
    assert resolve_tile_path("2024/35N/a.tiff", base) == f"{base}/2024/35N/a.tiff"
    assert resolve_tile_path("/abs/a.tiff", base) == "/abs/a.tiff"
    # the public index names S3 objects; the same objects are served over HTTPS
    s3 = "s3://us-west-2.opendata.source.coop/tge-labs/aef/v1/annual/2024/35N/x.tiff"
    assert resolve_tile_path(s3, base) == \
        "https://data.source.coop/tge-labs/aef/v1/annual/2024/35N/x.tiff"
