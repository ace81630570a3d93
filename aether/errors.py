"""Typed errors: one line saying what is wrong, and a hint saying what to do.

The CLI maps every ``AetherError`` to its ``exit_code`` (2; 3 for ``BudgetError``) and a
single line on stderr; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Literal

Surface = Literal["cli", "python"]
#: Whose names an error's text uses: the command line's flags (``--pois FILE``), set by its
#: entry point, or the Python API's keyword arguments (``pois=FILE``), the default. An
#: environment variable, so the worker processes a command starts render alike.
SURFACE_ENV = "AETHER_ERROR_SURFACE"


def use_surface(surface: Surface) -> None:
    """Render every error's text for ``surface`` from now on (the CLI calls it once)."""
    os.environ[SURFACE_ENV] = surface


class AetherError(Exception):
    """Base of every error a user can cause and fix.

    Message and hint are written once, naming command-line flags and commands
    (``--pois FILE``, ``aether train --run X``); ``str()`` renders them for the surface in
    use: as written on the command line, as keyword arguments and calls in Python
    (``pois=FILE``, ``aether.train(run=X)``).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.message} — {self.hint}" if self.hint else self.message
        return text if os.environ.get(SURFACE_ENV) == "cli" else for_python(text)


#: Flags that take no value: ``--offline`` is ``offline=True``, ``--no-geocode``
#: ``geocode=False``.
_SWITCHES = {"offline", "yes", "force", "overwrite", "geocode", "zarr", "tiles", "json",
             "shuffle", "include-examples"}
#: Flags whose keyword argument has another name.
_KEYWORDS = {"radius": "radii", "window": "radii", "set": "options", "seeds": "seeds"}
#: A flag's value as the Python argument it stands for, registered by the module that parses
#: it (this module sits below them all): ``--window square:4`` is ``radii=[-45]``.
PYTHON_VALUES: dict[str, Callable[[str], str]] = {}
_FLAG = re.compile(r"(?<![\w-])--(?P<no>no-)?(?P<name>[a-z][a-z0-9-]*)"
                   r"(?:[ =](?P<value>[A-Z0-9'\"./~-][^\s,;)`]*|[a-z0-9_]+[:=,./][^\s;)`]*))?")
_COMMAND = re.compile(r"`aether (?P<cmd>[a-z][a-z-]*)(?P<args>[^`]*)`")


def for_python(text: str) -> str:
    """``text`` with command-line flags as keyword arguments and ``aether CMD ...`` as
    ``aether.CMD(...)`` (how the Python API is called)."""
    return _FLAG.sub(_keyword, _COMMAND.sub(_call, text))


def _call(m: re.Match[str]) -> str:
    """A command as a call: inside a command every token after a flag is its value."""
    words, kw = m["args"].split(), []
    while words:
        word = words.pop(0)
        flag = _FLAG.fullmatch(word)
        if flag is None:
            continue  # a positional word (a run file): the call's first argument is shown
        value = None
        if flag["name"] not in _SWITCHES and words and not words[0].startswith("--"):
            value = words.pop(0)
        kw.append(_keyword_of(flag["no"] is not None, flag["name"], value))
    return f"`aether.{m['cmd'].replace('-', '_')}({', '.join(kw)})`"


def _keyword(m: re.Match[str]) -> str:
    return _keyword_of(m["no"] is not None, m["name"], m["value"])


def _keyword_of(no: bool, name: str, value: str | None) -> str:
    if name in _SWITCHES and not value:
        return f"{name.replace('-', '_')}={not no}"
    key = _KEYWORDS.get(name, name.replace("-", "_"))
    if not value:
        return f"{key}=..."
    if name == "set" and "=" in value:
        k, _, v = value.partition("=")
        return f"options={{{k!r}: {v}}}"
    if name in PYTHON_VALUES:
        try:
            return f"{key}={PYTHON_VALUES[name](value)}"
        except AetherError:
            return f"{key}=[...]"
    if name == "radius":
        return f"{key}=[{value}]"
    return f"{key}={value}"


class InputError(AetherError):
    """A command-line value or argument is invalid (radius, year, cell size, ...)."""


class ConfigError(AetherError):
    """A configuration or run file cannot be read or does not validate."""


class PlaceError(AetherError):
    """A place name, id, bbox or boundary cannot be resolved to a usable polygon."""


class PoiError(AetherError):
    """POIs cannot be read, mapped or found."""


class TilesError(AetherError):
    """AlphaEarth tiles or their index are missing, unreadable or do not cover the request."""


class CoverageError(TilesError):
    """The request lies outside the data's spatial or temporal coverage."""


class EarthEngineError(AetherError):
    """Earth Engine refused the request or cannot be reached with the given credentials."""


class BudgetError(EarthEngineError):
    """The run's Earth Engine budget (EECU-hours) is spent, or Earth Engine's own quota is:
    no new task starts. Exit code 3, so a scheduler can tell it from a failure."""

    exit_code = 3


class TableError(AetherError):
    """A table on disk is missing, empty, or does not match its contract."""


class ModelError(AetherError):
    """A model or checkpoint does not fit the data or config it is used with."""


class BusyError(AetherError):
    """A server has no worker or queue place left: the request is refused at once (503)."""


class DaskError(AetherError):
    """A Dask scheduler cannot be reached or used."""


class DependencyError(AetherError):
    """An installed dependency lacks what aether uses (an untested release)."""


class LinkError(AetherError):
    """A path inside the data directory is a symbolic link aether did not make."""


class LockedError(AetherError):
    """Another run holds the lock on the data directory."""
