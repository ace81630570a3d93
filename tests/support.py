"""Helpers both test tiers import: where the repository and ../shared/data are, optional
dependencies, free ports, and the served web app (start it, GET, read an answer)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
#: The cities of the ``fleet`` fixture's run file (tests/conftest.py).
FLEET_CITIES = ("Alpha", "Beta", "Gamma")
#: The bucket of the ``s3`` fixture's loopback S3 service (tests/conftest.py).
S3_BUCKET = "aether-fleet"
REQUIRE_SHARED = bool(os.environ.get("AETHER_REQUIRE_SHARED"))  # CI sets it
#: CI installs every extra (``.[dev]``): there an optional dependency that does not import is
#: a broken install, not a reason to skip.
REQUIRE_EXTRAS = bool(os.environ.get("AETHER_REQUIRE_EXTRAS"))


def require(module: str) -> ModuleType:
    """``module`` imported; skips the test (or module) when it does not import, and fails
    instead where AETHER_REQUIRE_EXTRAS is set (CI), so a broken install hides no test."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if REQUIRE_EXTRAS:
            pytest.fail(f"AETHER_REQUIRE_EXTRAS is set but {module} does not import: {e}",
                        pytrace=False)
        pytest.skip(f"needs {module} (pip install -e '.[dev]')", allow_module_level=True)


def optional_shared_file(name: str) -> Path | None:
    """A ../shared/data file, or None when absent; absent in CI (AETHER_REQUIRE_SHARED) fails."""
    path = SHARED_DATA / name
    if path.is_file():
        return path
    if REQUIRE_SHARED:
        pytest.fail(f"AETHER_REQUIRE_SHARED is set but {path} is absent", pytrace=False)
    return None


def shared_file(name: str) -> Path:
    """A ../shared/data file; skips the test (or module) when absent, fails in CI instead."""
    path = optional_shared_file(name)
    if path is None:
        pytest.skip(f"needs {SHARED_DATA / name} (../shared/data beside the clone)",
                    allow_module_level=True)
    return path


@contextlib.contextmanager
def serving(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``aether serve ARGS --port 0`` (the real CLI) in a subprocess; yields its URL and
    process, and stops it."""
    proc = subprocess.Popen([sys.executable, "-m", "aether", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    m = re.match(r"(http://127\.0\.0\.1:\d+/)", line)
    if not m:
        proc.wait(timeout=30)
        pytest.fail(f"serve did not start: {line!r} {proc.stderr.read()}")
    try:
        yield m.group(1), proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def http_get(url: str, host: str | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, bytes, str]:
    """Status, body and content type of a GET (an HTTP error is an answer, not raised)."""
    req = urllib.request.Request(url, headers={**({"Host": host} if host else {}),
                                               **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def served_answer(body: bytes) -> tuple[dict, np.ndarray]:
    """The page's binary reply: its JSON head and its heat raster (height × width bytes)."""
    n = struct.unpack("<I", body[:4])[0]
    head = json.loads(body[4:4 + n])
    heat = np.frombuffer(body[4 + n:], np.uint8)
    return head, heat.reshape(head["heat"]["height"], head["heat"]["width"])


def free_port() -> int:
    """A loopback port nothing listens on (bound by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Both credits as a map page holds them: in text, or JSON-escaped inside its script (©).
MAP_CREDITS = (re.compile(r"(©|\\u00a9|&copy;) OpenStreetMap contributors"),
               re.compile(r"The AlphaEarth Foundations Satellite Embedding dataset is produced "
                          r"by Google and Google DeepMind\."))


def has_map_credits(html: str) -> bool:
    """Whether a map page carries both data credits (as a browser would show them)."""
    return all(p.search(html) for p in MAP_CREDITS)


def share_sample(data_root: Path, data: Path) -> Path:
    """A data directory ``data`` of a test's own holding the session's built sample as hard
    links (cheap, and real files: aether refuses symbolic links it did not make)."""
    import os
    import shutil

    data.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(data_root) / "_sample", data / "_sample", copy_function=os.link)
    return data


def kill_once_tasks_start(args: list[str], operations: dict, n: int = 2,
                          timeout_s: float = 120) -> None:
    """Start ``python -m aether ARGS`` and SIGKILL it as soon as the Earth Engine emulator's
    ``operations`` hold ``n`` export tasks (the run must not have ended before)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "aether", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while len(operations) < n and proc.poll() is None:
        assert time.monotonic() - t0 < timeout_s, "no export task started in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill"


def fleet_tables(data: Path) -> dict[str, pd.DataFrame]:
    """A fleet run's POI embeddings per city folder."""
    return {p.parents[1].name: pd.read_parquet(p) for p in data.rglob("poi_embeddings.parquet")}


def fleet_report(stdout: str) -> dict:
    """The run report `aether run` names (its last line, or the one before a budget's)."""
    from aether.io.tables import read_json

    line = next(x for x in reversed(stdout.strip().splitlines()) if "report:" in x)
    path = line.split("report:", 1)[1].strip()
    return read_json(Path(path))


def on_exports(fleet: Path, url: str, exports: Path) -> None:
    """The fleet run file on the Earth Engine emulator at ``url``, through export tasks
    (batches of 10, 2 in flight) landing in the emulator's ``exports`` folder."""
    import yaml

    body = yaml.safe_load(fleet.read_text())
    body["source"] = {"name": "ee", "options": {
        "ee_url": url, "ee_project": "demo-project", "ee_batch": 10, "ee_concurrency": 2,
        "ee_backoff": 0.01, "ee_poll": 0.05, "export": "gcs://bucket/aether",
        "export_read": f"file://{exports}/gcs/bucket"}}
    fleet.write_text(yaml.safe_dump(body, sort_keys=False))
