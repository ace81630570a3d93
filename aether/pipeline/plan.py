"""What a run does, in an order it can be done in: a report row (``Step``) per (city, year,
step) of a run file, and for each the steps it runs after. Kept apart from how the steps
are carried out (``scheduled``: here; ``fleet``: on a Dask cluster; ``synced``: over a
remote data directory), which all follow the same plan.

Cities trained together (``train: {cities: [A, B]}``) are one train per year, after every
one of their extracts; each of their encodes runs after it, with the model in the first
city's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from aether.errors import ConfigError
from aether.pipeline.runfile import City, RunFile, unequal_years


class StepState(StrEnum):
    """What became of a step (the ``status`` of the run report)."""

    PENDING = "pending"
    DONE = "done"
    KEPT = "kept"  # the step's output was already there (a model of this config): recorded
    UP_TO_DATE = "up to date"
    FAILED = "failed"
    SKIPPED = "skipped"
    BUDGET = "budget reached"  # the run's Earth Engine budget or quota stopped it


DONE, KEPT, UP_TO_DATE, FAILED, SKIPPED, BUDGET = (
    StepState.DONE, StepState.KEPT, StepState.UP_TO_DATE, StepState.FAILED, StepState.SKIPPED,
    StepState.BUDGET)


@dataclass
class Step:
    """One (city, year, step) of a run and what became of it."""

    city: str
    slug: str
    year: int
    step: str
    status: StepState = StepState.PENDING
    seconds: float = 0.0
    rows: int | None = None
    out_dir: str | None = None
    error: str | None = None
    config_hash: str | None = None
    export_tasks: list[str] = field(default_factory=list)
    eecu_s: float | None = None  # what its Earth Engine export tasks reported using
    worker: str | None = None  # the Dask worker that ran it (cluster runs)

    @property
    def key(self) -> str:
        return f"{self.slug}/{self.year}/{self.step}"


class Planned(NamedTuple):
    """One step of the plan: the city it is for (a joint train: the first of its cities),
    its report row, and the keys of the steps it runs after. Its input folder is the first
    of those steps' output, when every one of them finished (``step_input``)."""

    city: City
    task: Step
    after: tuple[str, ...] = ()


def plan(run: RunFile) -> list[Planned]:
    """Every step of the run in an order that can be run as listed: each city's years, and
    per year its steps (extract, train, encode). Cities trained together (``train:
    {cities}``) are planned as one group, where the first of them stands in the file: per
    year, each one's extract, then their one train (its row named ``A+B``, its record in
    the first city's folder), then each one's encode."""
    from aether.places.place import slugify

    seen: dict[str, str] = {}
    for city in run.cities:
        slug = slugify(city.name)
        if slug in seen:
            raise ConfigError(f"cities {seen[slug]!r} and {city.name!r} share the folder {slug!r}",
                              "give them distinct names")
        seen[slug] = city.name
    steps: list[str] = [s for s in ("extract", "train", "encode") if s in run.steps]
    together = [c for name in run.train.cities or [] for c in run.cities if c.name == name]
    out: list[Planned] = []
    for city in run.cities:
        if city not in together:
            for year in _years(run, city):
                before: tuple[str, ...] = ()
                for step in steps:
                    task = Step(city.name, slugify(city.name), year, step)
                    out.append(Planned(city, task, before))
                    before = (task.key,)
        elif city is next(c for c in run.cities if c in together):
            out += _planned_together(run, together, steps)
    return out


def _years(run: RunFile, city: City) -> list[int]:
    return sorted({int(y) for y in city.years or run.years})  # after resolve_latest


def _planned_together(run: RunFile, cities: list[City], steps: list[str]) -> list[Planned]:
    """The steps of cities trained together (see ``plan``)."""
    from aether.places.place import slugify

    years = {c.name: _years(run, c) for c in cities}
    mixed = unequal_years(dict(years))  # a `latest` may have become another year
    if mixed:
        raise ConfigError(mixed, "give them the same years, or train them apart")
    home = cities[0]
    out: list[Planned] = []
    for year in years[home.name]:
        extracts = [Planned(c, Step(c.name, slugify(c.name), year, "extract")) for c in cities]
        out += extracts
        if "train" not in steps:
            continue
        joint = Step("+".join(c.name for c in cities), slugify(home.name), year, "train")
        out.append(Planned(home, joint, tuple(p.task.key for p in extracts)))
        if "encode" in steps:
            out += [Planned(p.city, Step(p.city.name, p.task.slug, year, "encode"),
                            (p.task.key, joint.key)) for p in extracts]
    return out


def step_input(outputs: list[Path | None]) -> Path | None:
    """A step's input folder from the outputs of the steps it runs after (in ``after``'s
    order): the first one's, or None (skip it) when any of them did not finish."""
    return None if not outputs or any(o is None for o in outputs) else outputs[0]


def model_home(run: RunFile, task: Step) -> str:
    """The slug of the folder that holds the model of ``task``'s city: the first city of
    the cities trained together, when it is one of them; else its own."""
    from aether.places.place import slugify

    together = [slugify(c) for c in run.train.cities or []]
    return together[0] if task.slug in together else task.slug


def step_slugs(run: RunFile, task: Step) -> list[str]:
    """The city folders (slugs) a step reads or writes, its own first: a joint train reads
    every one of its cities' tables (and caches their texts in each), the encode of one of
    them the model in the first one's folder. A remote run pulls and pushes these."""
    from aether.places.place import slugify

    together = [slugify(c) for c in run.train.cities or []]
    if task.step == "train" and together and task.slug == together[0]:
        return together
    home = model_home(run, task) if task.step == "encode" else task.slug
    return [task.slug] + ([home] if home != task.slug else [])
