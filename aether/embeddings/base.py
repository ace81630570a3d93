"""The one protocol every AlphaEarth source implements.

A source turns POIs (points, EPSG:4326) into buffer means per radius, and a place into grid
cell means (``aether.core.cells``). Sources are registered in ``SOURCES``: a name, a pydantic
options model (``extra="forbid"``: a misspelt option is an error, not a silent default) and a
factory ``create(options, workdir) -> EmbeddingSource``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from aether.errors import InputError

if TYPE_CHECKING:
    import geopandas as gpd
    import pandas as pd

    from aether.embeddings.fold import WindowSums
    from aether.places.place import Place


@runtime_checkable
class EmbeddingSource(Protocol):
    """What extract, grid and the scheduled runs need from any source."""

    name: str

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the ``poi_embeddings`` contract: one per poi × radius, in any order.

        ``pois`` has ``poi_id`` and point geometry in EPSG:4326. POIs outside coverage keep
        their rows with NaN vectors and ``valid_fraction`` 0.
        """
        ...

    def latest_year(self) -> int | None:
        """The newest year the dataset holds (``years: latest`` in run files)."""
        ...

    def version(self, year: int, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
        """What the year's tables over a lon/lat bbox are made from (tile names, image ids
        and versions): recorded in every table's manifest; a change redoes the table."""
        ...

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Rows of the ``grid_embeddings`` table: area-weighted means over the cells of
        ``cell`` (``100m``, ``0.5km``, ``h3:9``; see ``aether.core.cells``) covering ``place``."""
        ...


class SourceOptions(BaseModel):
    """Base of every source's options: unknown keys are refused, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Registered:
    """A source in the registry: ``module:Name`` of its options model and of its factory.

    Imported only when the source is used, so ``ee`` and ``xee`` cost nothing otherwise.
    """

    options: str
    factory: str

    @staticmethod
    def _load(ref: str) -> Any:
        module, _, attr = ref.partition(":")
        return getattr(importlib.import_module(module), attr)

    def options_model(self) -> type[SourceOptions]:
        return self._load(self.options)

    def create(self) -> Callable[[Any, Path | None], EmbeddingSource]:
        return self._load(self.factory)


#: The registered sources. Adding a source is a module (options model + factory) and a line.
SOURCES: dict[str, Registered] = {
    "cog": Registered("aether.embeddings.options:CogOptions", "aether.embeddings.cog:create"),
    "ee": Registered("aether.embeddings.earthengine.options:EeOptions",
                     "aether.embeddings.earthengine.source:create"),
    "xee": Registered("aether.embeddings.earthengine.options:XeeOptions",
                      "aether.embeddings.xee:create"),
}


def source_options(name: str, options: dict[str, Any]) -> SourceOptions:
    """``options`` checked against source ``name``'s model; InputError naming the bad key."""
    if name not in SOURCES:
        raise InputError(f"unknown source {name!r}", f"use one of: {', '.join(SOURCES)}")
    model = SOURCES[name].options_model()
    try:
        return model(**options)
    except ValidationError as e:
        raise InputError(*option_error(name, model, e)) from None


def option_error(name: str, model: type[BaseModel], e: ValidationError) -> tuple[str, str]:
    """(message, hint) of the first error of a source's options: the key and the valid ones."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "options"
    valid = ", ".join(model.model_fields)
    if err["type"] == "extra_forbidden":
        return f"source {name}: unknown option {key!r}", f"valid options: {valid}"
    if err["type"] == "missing":
        return f"source {name}: option {key!r} is required", f"valid options: {valid}"
    if not err["loc"]:  # a rule between options
        return (f"source {name}: {err['msg'].removeprefix('Value error, ')}",
                "see `aether extract --help`")
    return f"source {name}: option {key}: {err['msg']}", f"got {err.get('input')!r}"


@dataclass(frozen=True)
class SourceRequest:
    """A source and its options, checked against that source's model once, where the request
    is made (command line, run file, Python API), and carried typed from there.

    ``given`` says whether the user named the source: ``aether grid`` reuses the source an
    earlier extract recorded when none was named.
    """

    name: str
    options: SourceOptions
    given: bool = True

    @classmethod
    def of(cls, name: str | None, options: Mapping[str, Any] | None = None, *,
           offline: bool = False) -> SourceRequest:
        """The named source (default: ``cog`` offline or with ``tiles``, else ``ee``) with its
        options (``None`` values are not given); InputError for an unknown or bad option."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        chosen = name or ("cog" if offline or given.get("tiles") else "ee")
        return cls(chosen, source_options(chosen, given), given=name is not None)

    @property
    def settings(self) -> dict[str, Any]:
        """The options as given (unset ones left out: a default never changes a hash)."""
        return self.options.model_dump(exclude_unset=True)

    def replace(self, name: str | None = None, **options: Any) -> SourceRequest:
        """Another source and/or more options, checked again."""
        return SourceRequest.of(name or self.name, {**self.settings, **options})

    def create(self, workdir: Path | None = None) -> EmbeddingSource:
        """The source itself, working in ``workdir`` (its checkpoints and task book)."""
        return SOURCES[self.name].create()(self.options,
                                           Path(workdir) if workdir is not None else None)


def get_source(name: str, workdir: Path | None = None, **options: Any) -> EmbeddingSource:
    """Instantiate the registered source ``name``; InputError for an unknown or bad option."""
    return SourceRequest.of(name, options).create(workdir)


@runtime_checkable
class PixelSource(EmbeddingSource, Protocol):
    """A source that sums pixels itself (COG tiles, xee): it hands over per-window sums, so
    its table is written as they arrive (``aether.embeddings.fold``), never held whole."""

    def point_sums(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> Iterable[WindowSums]:
        """The sums of every buffer's part in every window it touches (``fold.WindowSums``)."""
        ...


def write_point_means(source: EmbeddingSource, pois: gpd.GeoDataFrame, radii: Sequence[float],
                      year: int, path: Path) -> int:
    """Write ``source``'s poi_embeddings table for ``pois`` at ``path`` (atomically, in the
    canonical row order); the number of rows. Pixel sources stream it in bounded memory."""
    from aether.embeddings import fold
    from aether.io.tables import sort_poi_embeddings, write_parquet

    if isinstance(source, PixelSource):
        return fold.write_point_means(pois, radii, year,
                                      source.point_sums(pois, radii, year), path)
    table = sort_poi_embeddings(source.point_means(pois, radii, year))
    write_parquet(table, path)
    return len(table)
