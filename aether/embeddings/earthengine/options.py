"""The options of the Earth Engine sources (``ee``, and the connection ``xee`` shares), with
the limits they are checked against: light to import, so both sources and the registry can."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from aether.embeddings.base import SourceOptions
from aether.embeddings.earthengine.session import EESettings
from aether.settings import current

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
