"""The options of the Earth Engine sources (``ee`` and ``xee``), with the limits they are
checked against: light to import, so the registry can check a run file's options without
loading either source (a fleet's client stays small)."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field, model_validator

from aether.core.aef import N_BANDS
from aether.embeddings.base import SourceOptions
from aether.embeddings.earthengine.session import EESettings
from aether.settings import current

#: EE refuses a computePixels answer whose "Total request size" exceeds 50,331,648 bytes;
#: it counts (bytes per value + 1 mask byte) for every band-pixel.
REQUEST_BYTES = 48 * 2**20
#: The ``xee`` source casts the bands to float32 (``.toFloat()``) so their type is known
#: whatever the asset stores; xee then ``unmask``es them with its int32 sentinel (2**31 - 1),
#: and a pixel type holding both float32 and that int is float64: 8 bytes a value are served,
#: plus the mask byte.
BYTES_PER_BAND_PIXEL = 8 + 1
#: Fraction of the limit a request may use (headroom for EE's own accounting).
REQUEST_MARGIN = 0.9
#: Side of one chunk = one request (pixels): the largest multiple of 64 within the margin.
CHUNK_PX = math.isqrt(int(REQUEST_MARGIN * REQUEST_BYTES) // (N_BANDS * BYTES_PER_BAND_PIXEL)
                      ) // 64 * 64

#: Features per reduceRegions request: one computeFeatures page (EE's default page size),
#: small enough to stay well under EE's interactive limits (payload, 5 min) at 200 m;
#: timeouts split it further.
DEFAULT_BATCH = 1000
#: Largest batch accepted (ten computeFeatures pages).
MAX_BATCH = 10_000
#: Parallel requests in flight (EE's default per-project quota is ~40 concurrent requests).
DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
#: Longest wait between polls of an Export task (polls start at 0.2 s and grow by 1.5×).
DEFAULT_POLL_S = 5.0
#: How long a finished export's file may take to appear where it is read (a synced Drive).
DEFAULT_EXPORT_WAIT_S = 600.0


class EeConnectionOptions(SourceOptions):
    """How to reach Earth Engine: shared by the ``ee`` and ``xee`` sources. The endpoint and
    project default to the settings (``AETHER_EE_URL``, ``AETHER_EE_PROJECT``/``EE_PROJECT``)."""

    ee_url: str | None = Field(default_factory=lambda: current().ee_url)
    ee_project: str | None = Field(default_factory=lambda: current().ee_project)
    ee_credentials: Path | None = None

    def session(self) -> EESettings:
        return EESettings(self.ee_url, self.ee_project,
                          str(self.ee_credentials) if self.ee_credentials else None)


class EeOptions(EeConnectionOptions):
    """Options of the ``ee`` source; the ranges are refused, not clamped, when exceeded."""

    export: str | None = None
    export_read: str | None = None
    ee_batch: int = Field(DEFAULT_BATCH, ge=1, le=MAX_BATCH)
    ee_concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    ee_poll: float = Field(DEFAULT_POLL_S, ge=0, le=3600)
    ee_backoff: float | None = Field(None, ge=0, le=600)
    ee_export_wait: float = Field(DEFAULT_EXPORT_WAIT_S, ge=0, le=86_400)
    #: Stop starting export tasks once their reported usage would pass this (needs export).
    ee_max_eecu_hours: float | None = Field(None, gt=0, le=1e6)
    #: The ledger that usage is counted in (a run's file in ``<data>/runs/`` by default);
    #: name one file in several runs to give them one budget.
    ee_budget_file: Path | None = None

    @model_validator(mode="after")
    def _budget_needs_export(self) -> EeOptions:
        if self.ee_max_eecu_hours is not None and not self.export:
            raise ValueError("ee_max_eecu_hours needs export: interactive requests report no "
                             "EECU usage, only export tasks do")
        return self


class XeeOptions(EeConnectionOptions):
    """Options of the ``xee`` source: the connection and the chunk edge in pixels."""

    xee_chunk: int | None = Field(None, ge=1, le=CHUNK_PX)
