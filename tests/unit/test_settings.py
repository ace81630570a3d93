"""One settings object: env prefix AETHER_, a YAML file, overrides in a context."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aether.errors import ConfigError
from aether.settings import current, data_dir, use_settings

PACKAGE = Path(__file__).resolve().parents[2] / "aether"
#: ``os.environ.get("AETHER_X")`` or ``os.environ["AETHER_X"]`` not being assigned (the test
#: hook AETHER_RUN_KILL_AT is no setting).
READ = re.compile(r"""environ(\.get\(\s*|\[)["']AETHER_(?!RUN_KILL_AT)[A-Z_]*["'](?!\]\s*=)""")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("AETHER_DATA_DIR", "AETHER_MAX_AREA_KM2", "AETHER_SETTINGS", "AETHER_EE_PROJECT",
                "EE_PROJECT", "AETHER_OSM_CACHE", "AETHER_OSM_BACKOFF_S"):
        monkeypatch.delenv(var, raising=False)


def test_defaults_and_env(monkeypatch) -> None:
    assert current().data_dir == Path("aether-data")
    assert current().osm_cache_dir == Path("aether-data") / "osm-cache"
    monkeypatch.setenv("AETHER_DATA_DIR", "/srv/aether")
    monkeypatch.setenv("AETHER_MAX_AREA_KM2", "12.5")
    monkeypatch.setenv("EE_PROJECT", "my-project")
    s = current()
    assert (s.data_dir, s.max_area_km2, s.ee_project) == (Path("/srv/aether"), 12.5, "my-project")
    assert s.osm_cache_dir == Path("/srv/aether/osm-cache")  # the cache follows the data dir
    assert data_dir() == Path("/srv/aether") and data_dir("elsewhere") == Path("elsewhere")


def test_yaml_file_under_env_under_overrides(tmp_path, monkeypatch) -> None:
    f = tmp_path / "aether.yaml"
    f.write_text("data_dir: /from/file\nmax_area_km2: 100\nosm_backoff_s: 0.5\n")
    monkeypatch.setenv("AETHER_SETTINGS", str(f))
    monkeypatch.setenv("AETHER_MAX_AREA_KM2", "7")
    s = current()
    assert (s.data_dir, s.max_area_km2, s.osm_backoff_s) == (Path("/from/file"), 7.0, 0.5)
    with use_settings(data_dir=tmp_path / "d") as inner:
        assert current() is inner and current().data_dir == tmp_path / "d"
        assert current().max_area_km2 == 7.0  # the rest is kept
        assert current().osm_cache_dir == tmp_path / "d" / "osm-cache"
    assert current().data_dir == Path("/from/file")  # restored after the block


@pytest.mark.parametrize("text", ["", "# every setting commented out\n# data_dir: /d\n", "~\n"])
def test_settings_file_that_sets_nothing_is_fine(tmp_path, monkeypatch, text) -> None:
    """An empty settings file (or one of comments) was refused as "not a mapping"."""
    f = tmp_path / "aether.yaml"
    f.write_text(text)
    monkeypatch.setenv("AETHER_SETTINGS", str(f))
    monkeypatch.delenv("AETHER_MAX_AREA_KM2", raising=False)
    assert current().max_area_km2 == type(current()).model_fields["max_area_km2"].default


@pytest.mark.parametrize(("text", "needle"), [
    ("max_aera_km2: 5\n", "max_aera_km2: unknown setting"),
    ("max_area_km2: .nan\n", "max_area_km2"),
    ("osm_backoff_s: -1\n", "osm_backoff_s"),
    ("- a list\n", "not a mapping"),
])
def test_bad_settings_file_is_one_line(tmp_path, monkeypatch, text, needle) -> None:
    f = tmp_path / "aether.yaml"
    f.write_text(text)
    monkeypatch.setenv("AETHER_SETTINGS", str(f))
    with pytest.raises(ConfigError, match=re.escape(needle)) as e:
        current()
    assert "\n" not in str(e.value)


def test_no_module_reads_aether_variables_but_settings() -> None:
    """Every ``AETHER_*`` setting goes through aether.settings (test hooks aside)."""
    readers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "settings.py" or "testing" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if READ.search(line):
                readers.append(f"{path.relative_to(PACKAGE)}:{n}")
    assert readers == []


def test_every_setting_is_documented() -> None:
    from aether.settings import Settings

    page = (PACKAGE.parent / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"| `{name}` | `AETHER_{name.upper()}`" in page, name
