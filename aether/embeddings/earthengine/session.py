"""One Earth Engine session for every source that talks to EE (``ee`` and ``xee``).

``EESettings`` is the picklable description of a session (endpoint, project, key file path):
the main process and every Dask worker process call ``ensure`` with it and initialise the
``ee`` client themselves, so no credential object ever crosses a process boundary. A
session the process started itself (a notebook's ``ee.Initialize(project=...)``) is used as
it is when the settings name no other endpoint, key or project, and left as found.

Credentials: a service-account JSON key when one is given; otherwise whatever
``ee.data.get_persistent_credentials()`` finds — the ``earthengine authenticate`` file, else
Google's Application Default Credentials (``gcloud auth application-default login``, which
``earthengine authenticate`` writes in gcloud mode; Colab; ``GOOGLE_APPLICATION_CREDENTIALS``;
the metadata server of Compute Engine, Cloud Run, Vertex). Only a loopback ``url`` (an
emulator) may be called without credentials. Credentials are never printed nor written.
The error classification here (``verdict``) is what ``aether.execution.jobs`` retries on.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether.errors import CoverageError, EarthEngineError, InputError
from aether.execution.jobs import RetryPolicy, Stats, Verdict, resilient_call

log = logging.getLogger(__name__)

_TRANSIENT_TEXT = (
    "quota", "rate limit", "too many requests", "internal error", "service unavailable",
    "backend error", "deadline exceeded", "temporarily", "unavailable", "try again",
)
#: Load that a smaller request avoids: halve the batch (or the chunk), never re-send as is.
_SPLIT_TEXT = (
    "computation timed out", "too many concurrent aggregations",
    "earth engine memory capacity exceeded", "earth engine capacity exceeded",
    "request payload size exceeds the limit", "total request size",
    "deadline expired",
)
_ESCALATE_TEXT = ("user memory limit exceeded", "out of memory")
#: Google Cloud quota messages name their limit ("... and limit 'X per minute per user'"):
#: a per-minute limit is a rate (retried); a daily or monthly one (EE's noncommercial compute
#: cap) does not come back by waiting. An assumption about the message's wording, from real
#: per-minute errors; a monthly-cap message worded otherwise is retried and then fails.
_EXHAUSTED_TEXT = ("per day", "per month", "monthly", "daily")
_ACCESS_TEXT = ("permission", "not registered", "has not been used", "denied",
                "not authorized", "forbidden")



@dataclass(frozen=True)
class EESettings:
    """Where and as whom to talk to Earth Engine; plain strings, so it pickles."""

    url: str | None = None
    project: str | None = None
    credentials: str | None = field(default=None, repr=False)

    def initialize(self, policy: RetryPolicy | None = None, stats: Stats | None = None) -> None:
        """``ee.Initialize`` against the endpoint, with typed errors for every failure."""
        import ee

        from aether._compat import no_catalog_fetch, retries_kept

        key = Path(self.credentials) if self.credentials else None
        credentials, project = _credentials(key, self.url, self.project)
        kwargs: dict[str, Any] = {"credentials": credentials, "project": project}
        if self.url:
            kwargs["url"] = self.url.rstrip("/")

        def init(_items: Sequence[Any], _level: int) -> Any:
            with retries_kept():
                ee.Reset()
                if self.url:  # the public catalog says nothing about another endpoint
                    with no_catalog_fetch():
                        ee.Initialize(**kwargs)
                else:
                    ee.Initialize(**kwargs)
            return None

        try:
            resilient_call(init, [None], transient_verdict, policy or RetryPolicy(),
                           stats=stats or Stats())
        except Exception as e:
            raise _init_error(e, project, self.url) from None
        _state["current"] = self


_state: dict[str, EESettings | None] = {"current": None}
_lock = threading.Lock()


def ensure(settings: EESettings, policy: RetryPolicy | None = None,
           stats: Stats | None = None) -> None:
    """Initialise this process's ``ee`` client for ``settings`` unless it already is.

    Called at the start of every task that talks to EE, on whatever process runs it.
    """
    import ee

    with _lock:
        if _state["current"] == settings and ee.data.is_initialized():
            return
        theirs = _users_session()
        if theirs is not None and settings.url is None and settings.credentials is None and (
                settings.project in (None, theirs)):
            log.info("using this process's own Earth Engine session (project %s)", theirs)
            _state["current"] = settings
            return
        if theirs is not None:
            log.warning("this process's Earth Engine session (project %s) is replaced by "
                        "aether's (%s): pass no --ee-url/--ee-credentials and the same "
                        "project to keep it", theirs, settings.project or "its login's project")
        settings.initialize(policy, stats)


def _users_session() -> str | None:
    """The project of an Earth Engine session this process started itself (a notebook's
    ``ee.Initialize(project=...)``), which aether uses rather than replaces; None if none."""
    import ee

    from aether._compat import private

    if _state["current"] is not None or not ee.data.is_initialized():
        return None  # aether's own session, or none
    return str(private("ee._state.get_state")().cloud_api_user_project or "") or None



def _credentials(
    key_file: Path | None, url: str | None, project: str | None
) -> tuple[Any, str]:
    """(credentials or None, project id); raises EarthEngineError with what to do."""
    creds: Any = None
    if key_file is not None:
        creds, key_project = _service_account(Path(key_file))
        project = project or key_project
    else:
        import ee

        try:
            creds = ee.data.get_persistent_credentials()
        except Exception as e:
            if not is_loopback(url):  # never anonymous against a real endpoint
                why = " ".join(str(e).split())
                found = _login_found()
                if found:  # a login is there: its token refresh failed (offline, revoked)
                    raise EarthEngineError(
                        f"found {found}, but its token could not be refreshed ({why})",
                        "check that Google's token endpoint is reachable (network, proxy); "
                        "if the login was revoked, run `earthengine authenticate` again",
                    ) from None
                raise EarthEngineError(
                    f"no Earth Engine credentials found ({why})",
                    "run `earthengine authenticate` (or `gcloud auth application-default "
                    "login`), pass --ee-credentials KEY.json, or use --offline",
                ) from None
            log.info("no Earth Engine login (%s): calling %s anonymously",
                     str(e).split("\n")[0], url)
            creds = None  # an emulator on this machine: no login needed
        # a login's quota project, or a service account's own (GOOGLE_APPLICATION_CREDENTIALS
        # naming a key: earthengine-api takes its project_id too)
        project = (project or getattr(creds, "quota_project_id", None)
                   or getattr(creds, "project_id", None))
    if not project:
        raise EarthEngineError("no Earth Engine project given",
                               "pass --ee-project ID or set EE_PROJECT")
    return creds, str(project)


def _login_found() -> str | None:
    """Which stored login ``get_persistent_credentials`` would have used, for messages."""
    import os

    import ee
    from google.auth import _cloud_sdk

    ee_file = Path(ee.oauth.get_credentials_path())
    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    adc = Path(_cloud_sdk.get_application_default_credentials_path())
    for path, what in ((ee_file, "the `earthengine authenticate` login"),
                       (Path(key) if key else None, "the key GOOGLE_APPLICATION_CREDENTIALS names"),
                       (adc, "gcloud's Application Default Credentials")):
        if path is not None and path.is_file():
            return f"{what} ({path})"
    return None


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` names this machine (127.0.0.0/8, ::1, localhost)."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname if url else None
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _service_account(path: Path) -> tuple[Any, str | None]:
    try:
        info = json.loads(path.read_text())
        email = info["client_email"]
    except (OSError, ValueError, KeyError, TypeError):
        raise EarthEngineError(f"cannot read a service-account key from {path}",
                               "pass the JSON key downloaded from the Cloud console") from None
    import ee

    try:
        creds = ee.ServiceAccountCredentials(email, key_file=str(path))
    except Exception:
        raise EarthEngineError(f"the service-account key {path} is not valid",
                               "download a new JSON key for the service account") from None
    return creds, info.get("project_id")


def http_status(e: BaseException) -> int | None:
    """The HTTP status behind an EEException (the client raises it inside its handler)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        resp = getattr(cur, "resp", None)
        if resp is not None and getattr(resp, "status", None) is not None:
            return int(resp.status)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def quota_exhausted(e: BaseException) -> bool:
    """A daily or monthly quota is spent: no retry helps until it resets."""
    text = str(e).lower()
    return "quota exceeded" in text and any(t in text for t in _EXHAUSTED_TEXT)


def verdict(e: BaseException) -> Verdict:
    """Classify a failed request (see ``aether.execution.jobs``)."""
    if quota_exhausted(e):
        return Verdict.FAIL
    if isinstance(e, (ConnectionError, TimeoutError, OSError)) and not isinstance(
            e, FileNotFoundError):
        return Verdict.RETRY  # dropped connection, reset, socket timeout (requests too)
    import http.client

    if isinstance(e, http.client.HTTPException):
        return Verdict.RETRY
    text = str(e).lower()
    if any(t in text for t in _ESCALATE_TEXT):
        return Verdict.ESCALATE
    if any(t in text for t in _SPLIT_TEXT):
        return Verdict.SPLIT
    status = http_status(e)
    if status is not None and (status == 429 or status >= 500):
        return Verdict.RETRY
    if any(t in text for t in _TRANSIENT_TEXT):
        return Verdict.RETRY
    return Verdict.FAIL


def transient_verdict(e: BaseException) -> Verdict:
    """Only transient errors are worth another try (Initialize, pixel reads)."""
    return Verdict.RETRY if verdict(e) is not Verdict.FAIL else Verdict.FAIL


def ee_error(e: BaseException) -> Exception:
    """Typed errors pass through; anything else the server said becomes EarthEngineError."""
    if isinstance(e, EarthEngineError | CoverageError | InputError):
        return e
    msg = str(e).strip().split("\n")[0] or type(e).__name__
    return EarthEngineError(f"Earth Engine request failed: {msg}",
                            "re-run to resume; finished batches are kept")


def _init_error(e: BaseException, project: str, url: str | None) -> Exception:
    if isinstance(e, EarthEngineError):
        return e
    msg = str(e).strip().split("\n")[0] or type(e).__name__
    low = msg.lower()
    status = http_status(e)
    if status in (401, 403) or any(t in low for t in _ACCESS_TEXT):
        return EarthEngineError(
            f"project {project!r} cannot use Earth Engine: {msg}",
            "register it at https://code.earthengine.google.com/register or pass another "
            "--ee-project",
        )
    where = url or "the Earth Engine service"
    return EarthEngineError(f"cannot connect to {where}: {msg}",
                            "check --ee-url and the network, or use --offline")


