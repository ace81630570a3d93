"""Run files (``pipelines/*.yaml``): what a scheduled ``aether run`` does, validated by pydantic.

A mistake in the file (an unknown key, a wrong type, bad YAML) is one line that names the
file and the line, e.g. ``cities.yaml:12: cities[1].radii[0]: Input should be a valid number``.
Relative paths in the file (``file:``/``pbf:`` POIs, ``boundary``, a ``tiles`` option,
``data_dir``) are read relative to the file's directory, so a run file works from any cwd;
``${VAR}`` in strings is expanded from the environment (project ids, buckets in CI).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)

from aether.embeddings.earthengine.options import MAX_CONCURRENCY
from aether.errors import ConfigError, InputError
from aether.ml.config import MAX_EPOCHS, MAX_SEED, PRESETS
from aether.pois.load import PoiOptions
from aether.settings import DEFAULT_RADII, DEFAULT_YEAR, check_radii, check_year

Step = Literal["extract", "train", "encode"]
LATEST = "latest"
#: Source options that are file paths (relative ones are read beside the run file).
PATH_OPTIONS = ("tiles", "ee_credentials", "ee_budget_file")


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError("an option is a string, a number, true/false or null")


#: One source option value (one check, so a mistake gives one clear message).
Scalar = Annotated[Any, AfterValidator(_scalar)]


def _windows(values: Any) -> Any:
    """``radii`` as the command line takes them: numbers are ``--radius`` circles (1 to
    5000 m), strings ``--window`` specs (``square:4,9``, ``circle:100``) expanded to their
    ``radius_m`` keys. A negative number is refused: a square is written ``square:P``."""
    from aether.core.windows import parse_window

    if not isinstance(values, list):
        return values
    out: list[Any] = []
    for v in values:
        if isinstance(v, str) and ":" in v:
            try:
                out += parse_window(v)
            except InputError as e:
                raise ValueError(f"{e.message} ({e.hint})") from None
        elif isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"radius {v:g} m is out of range: a radius is 1 to 5000 m "
                             "(as --radius); a square window is written square:P, "
                             "e.g. square:4,9")
        else:
            out.append(v)
    return out


def _radii(values: list[float]) -> list[float]:
    """The command line's range check (``check_radii``), order kept."""
    try:
        check_radii(values)
    except InputError as e:
        raise ValueError(f"{e.message} ({e.hint})") from None
    return values


def _year(value: Any) -> int | str:
    """The command line's year check (``check_year``), or ``latest``."""
    if value == LATEST:
        return LATEST
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"a year is a number (e.g. 2024) or {LATEST}, not {value!r}")
    try:
        return check_year(value)
    except InputError as e:
        raise ValueError(f"{e.message} ({e.hint})") from None


#: Radii and years checked as ``aether extract`` checks ``--radius``/``--window``/``--year``;
#: a year may be ``latest``: the newest the city's source holds, asked when the run starts.
Radii = Annotated[list[float], BeforeValidator(_windows), AfterValidator(_radii)]
Year = Annotated[int | Literal["latest"], PlainValidator(_year)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class SourceSpec(_Strict):
    """An embedding source (``ee``, ``cog``, ``xee``) and its options, as ``aether extract``
    takes them (``tiles``, ``ee_project``, ``export``, ``ee_batch``, ...)."""

    name: Literal["ee", "cog", "xee"] = "ee"
    options: dict[str, Scalar] = Field(default_factory=dict)


class EeSpec(_Strict):
    """Earth Engine limits of the whole run, across every city and Dask worker: the export
    tasks' compute budget, the requests and tasks in flight per Cloud project, and the
    ledger the budget is counted in (default: the run's own, in ``<data>/runs/``)."""

    max_eecu_hours: float | None = Field(default=None, gt=0, le=1e6)
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    budget_file: str | None = None

    def source_options(self) -> dict[str, Any]:
        """The ``ee`` source's options these set (over any source's own: a run's cap and
        budget hold for every city)."""
        named = {"ee_max_eecu_hours": self.max_eecu_hours, "ee_concurrency": self.concurrency,
                 "ee_budget_file": self.budget_file}
        return {k: v for k, v in named.items() if v is not None}


class TrainSpec(_Strict):
    """The optional ``train`` step (``aether train``). ``cities``: names of the file's
    cities trained together, one run on all their tables per year (``aether train --city A
    --city B``), kept in the first one's folder; the other cities train alone."""

    preset: str = "default"
    run: str | None = None
    epochs: int | None = Field(default=None, ge=1, le=MAX_EPOCHS)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    cities: list[str] | None = None

    @field_validator("cities")
    @classmethod
    def _several_once(cls, cities: list[str] | None) -> list[str] | None:
        """Two cities or more, each once: one city is the ordinary per-city train, and a
        repeated name is a slip the merged tables would refuse later, after the extracts."""
        if cities is None:
            return cities
        if len(cities) < 2:
            raise ValueError("name two or more cities to train together (one city trains "
                             "alone without this key)")
        twice = sorted({c for c in cities if cities.count(c) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(repr, twice))} named more than once")
        return cities

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        """As ``aether train --preset``: a name the file cannot misspell unnoticed."""
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (use one of {', '.join(PRESETS)})")
        return preset

    @field_validator("run")
    @classmethod
    def _usable_run_name(cls, run: str | None) -> str | None:
        """As ``aether train --run``: a name that is a folder of ``models/``, no path."""
        from aether.settings import check_slug

        if run is not None:
            try:
                check_slug(run)
            except InputError:
                raise ValueError(f"{run!r} is not a usable run name (use lower-case "
                                 "letters, digits, '-' and '_')") from None
        return run


class EncodeSpec(_Strict):
    """The optional ``encode`` step: a grid of ``cell`` and AETHER vectors for it."""

    cell: str = "100m"

    @field_validator("cell")
    @classmethod
    def _cell(cls, cell: str) -> str:
        """As ``aether encode --cell``, before any step runs (not when encode is reached)."""
        from aether.core.cells import parse_cell

        try:
            parse_cell(cell)
        except InputError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return cell


class City(_Strict):
    """One place. How it is found, in order: ``sample: true`` (the offline sample city),
    ``osm_id`` / ``bbox`` / ``boundary``, POIs from a ``file:``/``pbf:`` source (the place
    is their hull; nothing is geocoded), else the ``name`` through Nominatim."""

    name: str = Field(min_length=1)
    sample: bool = False
    osm_id: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    boundary: str | None = None
    which_result: int | None = Field(default=None, ge=1)
    yes: bool = False  # accept an area above the size limit (as --yes)
    pois: str | None = None
    poi_options: PoiOptions | None = None
    years: list[Year] | None = Field(default=None, min_length=1)
    radii: Radii | None = Field(default=None, min_length=1)
    source: SourceSpec | None = None


class RunFile(_Strict):
    """The whole file; per-city keys override the run-wide defaults."""

    data_dir: str | None = None
    #: Where the run's tasks go: threads (here, one city after another), cluster[:N] or a
    #: Dask scheduler's address (``aether run --scheduler`` wins over it).
    scheduler: str | None = None
    years: list[Year] = Field(default_factory=lambda: list[Year]([DEFAULT_YEAR]),
                             min_length=1)
    radii: Radii = Field(default_factory=lambda: list(DEFAULT_RADII), min_length=1)
    pois: str = "osm"
    poi_options: PoiOptions = Field(default_factory=PoiOptions)
    source: SourceSpec = Field(default_factory=SourceSpec)
    ee: EeSpec = Field(default_factory=EeSpec)
    steps: list[Step] = Field(default_factory=lambda: cast(list[Step], ["extract"]), min_length=1)
    train: TrainSpec = Field(default_factory=TrainSpec)
    encode: EncodeSpec = Field(default_factory=EncodeSpec)
    cities: list[City] = Field(min_length=1)

    @field_validator("steps")
    @classmethod
    def _extract_first(cls, steps: list[str]) -> list[str]:
        if "extract" not in steps:
            raise ValueError("steps must include extract (train and encode read its tables)")
        if "encode" in steps and "train" not in steps:
            raise ValueError("the encode step needs the train step")
        return steps


def load_run_file(path: str | os.PathLike[str], *, strict: bool = False) -> RunFile:
    """Read and validate a run file; ConfigError with ``file:line`` on any mistake.

    Options no source knows (a misspelt ``ee_bacth``) and bad values are always refused.
    ``strict`` (what ``aether run`` uses, before any work) also refuses an unset ``${VAR}``
    and an option of another source (``tiles`` given to ``ee``); without it an unset
    variable stays as written, so a file can be checked without its environment.
    """
    from aether.yamlfile import load_yaml

    p = Path(path)
    data, root = load_yaml(p, what="run file")
    if not isinstance(data, dict):
        raise ConfigError(f"{p.name}:1: a run file is a mapping with a 'cities' list",
                          "see pipelines/cities.yaml")
    try:
        run = RunFile.model_validate(_expand(data, (), root, p, strict))
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        what = ("unknown key" if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, "))
        raise ConfigError(f"{p.name}:{_line(root, loc)}: {_dotted(loc)}: {what}{more}",
                          "see the keys documented in pipelines/README.md") from None
    _check_sources(run, root, p, strict)
    _check_together(run, root, p)
    return _relative_to(run, p.resolve().parent)


_VAR = re.compile(r"\$(?:\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _expand(value: Any, loc: tuple[Any, ...], root: Any, path: Path, strict: bool) -> Any:
    """``${VAR}`` in every string, recursively; strict: an unset variable is refused."""
    if isinstance(value, str):
        for m in _VAR.finditer(value) if strict else ():
            name = m.group(1) if m.group(1) is not None else m.group(2)
            if name not in os.environ:
                raise ConfigError(f"{path.name}:{_line(root, loc)}: {_dotted(loc)}: "
                                  f"${{{name}}} is not set",
                                  f"export {name}=... before the run, or write the value")
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, k), root, path, strict) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), root, path, strict) for i, v in enumerate(value)]
    return value


def _check_sources(run: RunFile, root: Any, path: Path, strict: bool) -> None:
    """Every source's options against that source's model (a misspelt option is refused;
    one of another source only when ``strict``)."""
    from aether.embeddings.base import SOURCES, option_error

    known = {k for entry in SOURCES.values() for k in entry.options_model().model_fields}

    specs: list[tuple[tuple[Any, ...], SourceSpec]] = [(("source",), run.source)]
    specs += [(("cities", i, "source"), c.source) for i, c in enumerate(run.cities)
              if c.source is not None]
    for loc, spec in specs:
        model = SOURCES[spec.name].options_model()
        options = {k: v for k, v in spec.options.items()
                   if strict or k in model.model_fields or k not in known}
        if spec.name == "ee":  # the run's limits, checked with the options they join
            options = {**options, **run.ee.source_options()}
        try:
            model(**options)
        except ValidationError as e:
            key = tuple(e.errors()[0]["loc"])
            message, hint = option_error(spec.name, model, e)
            where = (*loc, "options", *key)
            raise ConfigError(f"{path.name}:{_line(root, where)}: {message}", hint) from None


def _check_together(run: RunFile, root: Any, path: Path) -> None:
    """``train.cities`` names cities of this file, all of the same years (each year's joint
    train needs every one's extract of that year)."""
    names = run.train.cities or []
    known = [c.name for c in run.cities]
    for i, name in enumerate(names):
        if name not in known:
            raise ConfigError(f"{path.name}:{_line(root, ('train', 'cities', i))}: "
                              f"train.cities[{i}]: {name!r} is not one of the file's cities",
                              f"use the name: of a city in the file ({', '.join(known)})")
    years = {c.name: list(c.years or run.years) for c in run.cities if c.name in names}
    mixed = None if any(LATEST in y for y in years.values()) else unequal_years(years)
    if mixed:  # a `latest` is compared once it is a year, when the run is planned
        raise ConfigError(f"{path.name}:{_line(root, ('train', 'cities'))}: train.cities: "
                          f"{mixed}", "give them the same years, or train them apart")


def unequal_years(years: dict[str, list[Any]]) -> str | None:
    """What is wrong with the years of cities trained together (by name), or None: each
    year's joint train needs every one of their extracts of that year."""
    sets = {name: sorted({int(y) for y in ys}) for name, ys in years.items()}
    if len({tuple(y) for y in sets.values()}) < 2:
        return None
    return ("cities trained together need the same years ("
            + "; ".join(f"{c} {', '.join(map(str, y))}" for c, y in sets.items()) + ")")


def _line(node: Any, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest YAML node on ``loc`` (a key's own line if unknown)."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == part), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "file"


def _relative_to(run: RunFile, base: Path) -> RunFile:
    """Paths in the file, resolved against its directory."""

    def path(v: str | None) -> str | None:
        return None if v is None or "://" in v or Path(v).is_absolute() else str(base / v)

    def spec(v: str | None) -> str | None:
        if v is None or ":" not in v:
            return v
        kind, rest = v.split(":", 1)
        return f"{kind}:{path(rest) or rest}" if kind in ("file", "pbf") else v

    def source(s: SourceSpec | None) -> SourceSpec | None:
        if s is None:
            return s
        opts = {k: (path(v) or v) if k in PATH_OPTIONS and isinstance(v, str) else v
                for k, v in s.options.items()}
        return s.model_copy(update={"options": opts})

    cities = [c.model_copy(update={"pois": spec(c.pois), "source": source(c.source),
                                   "boundary": path(c.boundary) or c.boundary})
              for c in run.cities]
    return run.model_copy(update={
        "data_dir": path(run.data_dir) or run.data_dir, "pois": spec(run.pois),
        "source": source(run.source), "cities": cities,
        "ee": run.ee.model_copy(update={"budget_file": path(run.ee.budget_file)
                                        or run.ee.budget_file})})
