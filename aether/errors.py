"""Typed errors: one line saying what is wrong, and a hint saying what to do.

The CLI maps every ``AetherError`` to its ``exit_code`` (2; 3 for ``BudgetError``) and a
single line on stderr; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class AetherError(Exception):
    """Base of every error a user can cause and fix."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


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
