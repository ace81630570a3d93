"""One settings object: where data lives, which endpoints to use, the limits of a run.

Values come from, highest first: overrides given in code or on the command line
(``use_settings(data_dir=...)``), ``AETHER_*`` environment variables, a YAML settings file
(``AETHER_SETTINGS=path.yaml`` or ``aether --settings FILE``), then the defaults below.
``current()`` is what library code reads; it is built when asked for, so a variable set in
the environment (a test's ``monkeypatch.setenv``) applies to the next call. Every setting is
listed on ``docs/settings.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from aether.errors import ConfigError, InputError

DEFAULT_DATA_DIR = "aether-data"
#: The public AlphaEarth COG index (Source Cooperative's free HTTPS mirror of
#: ``gs://alphaearth_foundations``, which is requester-pays): ``--source cog``'s default tiles.
DEFAULT_TILES = "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet"
DEFAULT_YEAR = 2024
DEFAULT_RADII: tuple[float, ...] = (100.0, 200.0)
MAX_RADIUS_M = 5_000.0
MIN_RADIUS_M = 1.0
MAX_AREA_KM2 = 2_500.0
SETTINGS_FILE_ENV = "AETHER_SETTINGS"
_SLUG_OK = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")


class Settings(BaseSettings):
    """Everything aether reads from its environment, typed and checked once."""

    model_config = SettingsConfigDict(env_prefix="AETHER_", extra="forbid", frozen=True,
                                      populate_by_name=True)

    data_dir: Path = Field(Path(DEFAULT_DATA_DIR), description="Data directory")
    max_area_km2: float = Field(MAX_AREA_KM2, gt=0, allow_inf_nan=False,
                                description="Places larger than this ask for --yes")
    nominatim_url: str | None = Field(None, description="Nominatim endpoint (osmnx default)")
    overpass_url: str | None = Field(None, description="Overpass endpoint (osmnx default)")
    osm_cache: Path | None = Field(None, description="osmnx cache [<data_dir>/osm-cache]")
    osm_backoff_s: float = Field(1.0, ge=0, le=120, allow_inf_nan=False,
                                 description="First wait before an OSM retry (doubles)")
    network_timeout_s: float = Field(3.0, gt=0, le=60, allow_inf_nan=False,
                                     description="How long the no-network check waits")
    ee_url: str | None = Field(None, description="Earth Engine endpoint")
    ee_project: str | None = Field(
        None, validation_alias=AliasChoices("ee_project", "AETHER_EE_PROJECT", "EE_PROJECT"),
        description="Cloud project for Earth Engine (also EE_PROJECT)")
    dask_scheduler: str | None = Field(None, description="Dask scheduler [threads]")
    overture_release: str | None = Field(None, description="Overture Places release")
    overture_root: str | None = Field(None, description="Overture release root (s3:// or dir)")
    overture_endpoint: str | None = Field(None, description="S3 endpoint for Overture")
    tiles: str | None = Field(None, description="COG tiles for --source cog [the public AEF "
                                                "index]")
    cache_dir: Path | None = Field(None, description="Downloaded indexes [$XDG_CACHE_HOME/aether]")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlFile(settings_cls)

    @property
    def osm_cache_dir(self) -> Path:
        """Where osmnx caches Nominatim/Overpass answers: under the data directory."""
        return self.osm_cache or self.data_dir / "osm-cache"


class _YamlFile(PydanticBaseSettingsSource):
    """The YAML settings file named by ``AETHER_SETTINGS`` (read with the run files' limits)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(SETTINGS_FILE_ENV)
        if not path:
            return {}
        from aether.yamlfile import load_yaml

        data, _ = load_yaml(Path(path), what="settings file")
        if data is None:  # empty, or only comments: a settings file that sets nothing
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"settings file {path} is not a mapping",
                              "write `key: value` lines, see docs/settings.md")
        return data


_override: contextvars.ContextVar[Settings | None] = contextvars.ContextVar(
    "aether_settings", default=None)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and file with ``overrides`` on top; ConfigError if bad."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        what = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        valid = ", ".join(sorted(Settings.model_fields))
        raise ConfigError(f"setting {key}: {what}",
                          f"settings are {valid} (env AETHER_<NAME>)") from None


def current() -> Settings:
    """The settings in effect: the innermost ``use_settings`` block, else env and file."""
    return _override.get() or load_settings()


@contextlib.contextmanager
def use_settings(settings: Settings | None = None, **overrides: Any) -> Iterator[Settings]:
    """Run a block with ``settings`` (or the current ones with ``overrides``) in effect."""
    base = settings or current()
    chosen = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    token = _override.set(chosen)
    try:
        yield chosen
    finally:
        _override.reset(token)


def as_url(value: str | os.PathLike[str]) -> str:
    """The URL a ``Path`` made of one lost a slash of (``s3:/b/p`` → ``s3://b/p``)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", str(value))


def is_url(value: str | os.PathLike[str] | None) -> bool:
    """A remote data directory: ``scheme://…`` other than ``file://`` (which is a path);
    also such a URL once made a ``Path`` (``s3:/bucket``: a setting typed as a path)."""
    text = as_url(value or "")
    return "://" in text and not text.startswith("file://")


def local_path(value: str | os.PathLike[str]) -> Path:
    """A local data directory, ``file://`` (or ``file:/`` once made a path) stripped."""
    return Path(re.sub(r"^file:/+", "/", str(value)))


def data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the option, else the settings' (``AETHER_DATA_DIR``, default
    ``./aether-data``). A URL (``s3://…``, seen here as ``s3:/…`` once made a path) is
    refused: only ``aether run`` works on a remote data directory (``io.remote``)."""
    chosen = local_path(value or current().data_dir)
    if is_url(chosen):
        raise InputError(f"the data directory {value or chosen} is a URL; only `aether run` "
                         "works on a remote data directory",
                         "run the steps from a run file (`aether run FILE --data-dir URL`), "
                         "or give a local folder")
    return chosen


def tiles(value: str | os.PathLike[str] | None = None) -> str:
    """The COG tiles: the option, else ``AETHER_TILES``, else the public index (DEFAULT_TILES)."""
    return str(value or current().tiles or DEFAULT_TILES)


def cache_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """Where downloaded indexes are kept: ``AETHER_CACHE_DIR``, else ``$XDG_CACHE_HOME/aether``."""
    chosen = value or current().cache_dir
    if chosen:
        return Path(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "aether"


def check_radii(radii: list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """Radii in metres, de-duplicated and sorted: MIN_RADIUS_M to MAX_RADIUS_M for circles,
    negative for square pixel windows (``aether.core.windows``: -(p + 0.5) × 10 m for a
    (2p + 1)² px square), at most MAX_RADIUS_M either way."""
    for r in radii:
        if not (MIN_RADIUS_M <= abs(r) <= MAX_RADIUS_M):
            raise InputError(
                f"radius {r:g} m is out of range",
                f"use a radius between {MIN_RADIUS_M:g} and {MAX_RADIUS_M:g} m, "
                "e.g. --radius 100",
            )
        if r < 0 and (-r / 10.0 - 0.5) % 1:
            raise InputError(f"radius {r:g} m is not a square pixel window",
                             "use --window square:P (e.g. square:4,9), or a positive radius")
    return tuple(sorted({float(r) for r in radii}))


def check_year(year: int) -> int:
    """A plausible AlphaEarth year (the dataset starts in 2017)."""
    from aether.core.aef import FIRST_YEAR

    if year < FIRST_YEAR or year > 2100:
        raise InputError(f"year {year} is out of range", f"AlphaEarth starts in {FIRST_YEAR}")
    return year


def check_slug(slug: str) -> str:
    """A slug is a single safe path component: it can never escape the data directory."""
    if not _SLUG_OK.match(slug):
        raise InputError(f"{slug!r} is not a safe place slug", "use letters, digits, '-' and '_'")
    return slug

