"""A notebook's own Earth Engine session is used, not replaced, and left as found (#25 item 11).

The user's ``ee.Initialize(project=...)`` is made with the genuine client against the
emulator (in-process transport); aether's source is then created as a notebook user would,
with no endpoint, key or project of its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import pytest

from aether.embeddings import get_source
from aether.embeddings.earthengine import session
from aether.testing.emulator import connect, running


@pytest.fixture
def users_session(emulator, monkeypatch: pytest.MonkeyPatch):
    import ee

    for var in ("EE_PROJECT", "AETHER_EE_PROJECT", "AETHER_EE_URL",
                "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(session._state, "current", None)  # a fresh process: aether never ran
    connect(emulator, project="users-own-project")
    yield ee._state.get_state()
    ee.Reset()


def test_the_users_session_is_used_and_left_as_found(users_session, emulator,
                                                      sample_extract: Path, tmp_path: Path,
                                                      caplog) -> None:
    import ee

    caplog.set_level(logging.INFO, logger="aether")
    before = (users_session.cloud_api_user_project, users_session.http_transport,
              users_session.max_retries)
    pois = gpd.read_parquet(sample_extract / "pois.parquet").head(30)
    src = get_source("ee", workdir=tmp_path / "ee", ee_backoff=0.01)
    rows = src.point_means(pois, [100.0], 2024)
    assert len(rows) == 30 and rows["weight"].gt(0).all()
    assert sum(1 for e in emulator.log if e["route"] == "table:computeFeatures") >= 1
    state = ee._state.get_state()
    assert (state.cloud_api_user_project, state.http_transport, state.max_retries) == before
    assert any("own Earth Engine session" in r.getMessage() for r in caplog.records)


def test_other_settings_replace_it_with_a_warning(users_session, emulator, caplog) -> None:
    import ee

    assert session._users_session() == "users-own-project"
    with running(emulator) as url:
        session.ensure(session.EESettings(url=url, project="another"))
        assert ee._state.get_state().cloud_api_user_project == "another"
    assert any("is replaced by aether's" in r.getMessage() for r in caplog.records)
