"""Fault injection: Earth Engine's transient and load-dependent failures, by rate or schedule.

Only compute routes are eligible (value:compute, table:computeFeatures, image:computePixels,
table:export); discovery, algorithms and operation polling never fail, so ``ee.Initialize``
and ``task.status()`` stay reliable. Faults are drawn from a seeded RNG (reproducible runs)
or taken from a schedule keyed by the eligible request number (0-based).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

from aether.errors import InputError

#: kind -> (HTTP status, EE status, message). ``drop`` closes the socket without an answer;
#: ``export_failed`` lets an export start and then end FAILED.
KINDS: dict[str, tuple[int, str, str]] = {
    "quota": (429, "RESOURCE_EXHAUSTED",
              "Too Many Requests: Request was rejected because the request rate or "
              "concurrency limit was exceeded."),
    # a monthly cap (EE's noncommercial compute quota), worded as Google Cloud words its
    # quota errors; the metric's name is the emulator's guess
    "quota_month": (429, "RESOURCE_EXHAUSTED",
                    "Quota exceeded for quota metric 'EECU-seconds' and limit 'EECU-seconds "
                    "per month' of service 'earthengine.googleapis.com' for consumer "
                    "'project_number:0'."),
    "internal": (500, "INTERNAL", "An internal error has occurred."),
    "unavailable": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "timeout": (400, "INVALID_ARGUMENT", "Computation timed out."),
    "memory": (400, "INVALID_ARGUMENT", "User memory limit exceeded."),
    "aggregations": (400, "INVALID_ARGUMENT", "Too many concurrent aggregations."),
    "ee_memory": (400, "INVALID_ARGUMENT", "Earth Engine memory capacity exceeded."),
    "capacity": (400, "INVALID_ARGUMENT", "Earth Engine capacity exceeded."),
    "payload": (400, "INVALID_ARGUMENT",
                "Request payload size exceeds the limit: 10485760 bytes."),
    "request_size": (400, "INVALID_ARGUMENT",
                     "Total request size ({n} bytes) must be less than or equal to "
                     "50331648 bytes."),
    "deadline": (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
    "drop": (0, "", "connection dropped"),
    "export_failed": (0, "", "Export failed: an internal error has occurred."),
}
#: What random faults draw from: the failures a retry (or a smaller request) gets past; an
#: exhausted monthly quota ends a run, so it comes only when named.
ALL_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "quota_month")
EXPORT = "table:export"
#: N of a ``request_size`` fault when the request's own size is not over the limit: the
#: figure real EE gave for xee's old default chunks (github.com/google/Xee/issues/50).
DEFAULT_REQUEST_BYTES = 56623104


def fault_message(kind: str, request_bytes: int | None = None) -> str:
    """The message of fault ``kind``; ``request_size`` names a size over the limit: the
    request's own answer size when it is larger, else ``DEFAULT_REQUEST_BYTES``."""
    message = KINDS[kind][2]
    if kind != "request_size":
        return message
    n = request_bytes if request_bytes and request_bytes > 50331648 else DEFAULT_REQUEST_BYTES
    return message.format(n=n)


@dataclass
class Faults:
    """What to inject. ``rate`` in [0, 1]; ``schedule`` maps request number -> kind."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ALL_KINDS
    seed: int = 0
    schedule: dict[int, str] = field(default_factory=dict)
    latency: float = 0.0  # seconds added to every eligible request

    def __post_init__(self) -> None:
        unknown = [k for k in (*self.kinds, *self.schedule.values()) if k not in KINDS]
        if unknown:
            raise InputError(f"unknown fault kind(s) {', '.join(unknown)}",
                             f"choose from {', '.join(KINDS)}")
        if not 0 <= self.rate <= 1 or self.latency < 0:
            raise InputError(f"bad fault rate {self.rate} or latency {self.latency}",
                             "the rate is a fraction in [0, 1], the latency seconds >= 0")
        self._rng = random.Random(self.seed)
        self._n = 0
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, rate: float = 0.0, kinds: str = "", seed: int = 0, schedule: str = "",
              latency: float = 0.0) -> Faults:
        """From CLI strings: ``kinds='quota,drop'``, ``schedule='0:quota,3:drop'``."""
        ks = tuple(k.strip() for k in kinds.split(",") if k.strip()) or ALL_KINDS
        sched = {}
        for item in filter(None, (s.strip() for s in schedule.split(","))):
            n, _, kind = item.partition(":")
            if not n.strip().isdigit():
                raise InputError(f"bad fault schedule item {item!r}",
                                 "write REQUEST_NUMBER:KIND pairs, e.g. 0:quota,3:drop")
            sched[int(n)] = kind.strip()
        return cls(rate, ks, seed, sched, latency)

    def draw(self, route: str) -> str | None:
        """The fault for the next eligible request on ``route`` (None: answer normally)."""
        with self._lock:
            n = self._n
            self._n += 1
            if n in self.schedule:
                kind: str | None = self.schedule[n]
            elif self.rate and self._rng.random() < self.rate:
                usable = [k for k in self.kinds if k != "export_failed" or route == EXPORT]
                kind = self._rng.choice(usable) if usable else None
            else:
                kind = None
        # only an export can fail later; elsewhere a scheduled export_failed is a no-op
        return None if kind == "export_failed" and route != EXPORT else kind
