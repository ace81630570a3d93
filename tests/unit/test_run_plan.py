"""A run file's plan: each step after the ones whose output it needs, cities trained together
(`train: {cities}`) as one train per year after all of their extracts."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether.errors import ConfigError
from aether.pipeline.runfile import load_run_file
from aether.pipeline.scheduled import plan, step_input, step_slugs


def _load(tmp_path: Path, text: str):
    f = tmp_path / "t.yaml"
    f.write_text(text)
    return load_run_file(f)


def test_cities_trained_together_are_one_train_per_year(tmp_path: Path) -> None:
    run = _load(tmp_path, "years: [2023, 2024]\nsteps: [extract, train, encode]\n"
                          "train: {cities: [Beta, Alpha]}\n"
                          "cities: [{name: Alpha}, {name: Gamma}, {name: Beta}]\n")
    rows = [(p.task.city, p.task.slug, p.task.year, p.task.step, p.after) for p in plan(run)]
    group = [(y, [("Beta", "beta", y, "extract", ()), ("Alpha", "alpha", y, "extract", ()),
                  ("Beta+Alpha", "beta", y, "train", (f"beta/{y}/extract",
                                                      f"alpha/{y}/extract")),
                  ("Beta", "beta", y, "encode", (f"beta/{y}/extract", f"beta/{y}/train")),
                  ("Alpha", "alpha", y, "encode", (f"alpha/{y}/extract", f"beta/{y}/train"))])
             for y in (2023, 2024)]
    gamma = [("Gamma", "gamma", y, s, after) for y in (2023, 2024) for s, after in (
        ("extract", ()), ("train", (f"gamma/{y}/extract",)),
        ("encode", (f"gamma/{y}/train",)))]
    # the group stands where the first of its cities stands in the file (Alpha)
    assert rows == [*group[0][1], *group[1][1], *gamma]
    by_key = {p.task.key: p.task for p in plan(run)}
    assert step_slugs(run, by_key["beta/2024/train"]) == ["beta", "alpha"]
    assert step_slugs(run, by_key["alpha/2024/encode"]) == ["alpha", "beta"]
    assert step_slugs(run, by_key["beta/2024/encode"]) == ["beta"]
    assert step_slugs(run, by_key["alpha/2024/extract"]) == ["alpha"]
    assert step_slugs(run, by_key["gamma/2024/encode"]) == ["gamma"]


def test_a_plan_without_cities_together_is_each_city_in_turn(tmp_path: Path) -> None:
    run = _load(tmp_path, "steps: [extract, train]\ncities: [{name: Alpha}, {name: Beta}]\n")
    assert [(p.task.key, p.after) for p in plan(run)] == [
        ("alpha/2024/extract", ()), ("alpha/2024/train", ("alpha/2024/extract",)),
        ("beta/2024/extract", ()), ("beta/2024/train", ("beta/2024/extract",))]


def test_a_step_runs_on_its_first_input_when_every_input_finished() -> None:
    a, b = Path("a"), Path("b")
    assert step_input([a, b]) == a
    assert step_input([a, None]) is None
    assert step_input([None, b]) is None
    assert step_input([]) is None


@pytest.mark.parametrize(("text", "says"), [
    ("train: {cities: [Alpha, Beta]}\ncities:\n  - name: Alpha\n    years: [2023]\n"
     "  - name: Beta\n", "t.yaml:1: train.cities: cities trained together need the same years "
                         "(Alpha 2023; Beta 2024)"),
    ("train:\n  cities: [Alpha, alpha]\ncities: [{name: Alpha}, {name: Beta}]\n",
     "t.yaml:2: train.cities[1]: 'alpha' is not one of the file's cities"),
])
def test_cities_together_are_checked_with_the_file(tmp_path: Path, text: str,
                                                   says: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert str(e.value).startswith(says), str(e.value)
    assert "\n" not in str(e.value)
