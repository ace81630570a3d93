"""Options of the ``cog`` source, apart from the source itself: the registry checks a run
file's options without importing the raster stack (a fleet's client stays small)."""

from __future__ import annotations

from pathlib import Path

from aether.embeddings.base import SourceOptions


class CogOptions(SourceOptions):
    """Options of the ``cog`` source (``--tiles``)."""

    tiles: str | Path | None = None
