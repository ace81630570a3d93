"""Where benchmarks put their figures: one JSON file each, which ``render_docs.py`` turns into
docs/benchmarks.md (the page is never typed by hand); and how a measurement runs in a child
process of its own and hands its figures back (``in_child``)."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import queue
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_now() -> float:
    """The 1-minute load average, as each figure records it."""
    return round(os.getloadavg()[0], 1)


def measured_at() -> dict[str, object]:
    """When and on what the figures were taken (the load average goes with every figure)."""
    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "load_at_end": load_now()}


def write_results(path: str | os.PathLike[str], payload: dict[str, object]) -> Path:
    """Write ``payload`` as JSON atomically (temp file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    tmp.replace(out)
    print(f"results written to {out}")
    return out


class _Failed:
    """What a child sends back instead of figures: its traceback."""

    def __init__(self, text: str) -> None:
        self.text = text


def _guarded(target: Callable[..., None], args: tuple[Any, ...], q: Any) -> None:
    try:
        target(*args, q)
    except BaseException:
        q.put(_Failed(traceback.format_exc()))
        raise


def in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run ``target(*args, q)`` in a fresh (spawned) process and return what it puts on ``q``.

    Its own process, so its CPU time and peak memory are its own. A child that raises ends
    the bench with the child's traceback, and one that dies without an answer (killed,
    crashed) with its exit code: never a parent waiting forever on the queue.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_guarded, args=(target, args, q))
    p.start()
    try:
        while True:
            try:
                res = q.get(timeout=1.0)
                break
            except queue.Empty:
                if not p.is_alive():
                    try:  # an answer may have landed just before the child exited
                        res = q.get(timeout=1.0)
                        break
                    except queue.Empty:
                        raise SystemExit(f"{target.__name__} died without an answer (exit "
                                         f"code {p.exitcode})") from None
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if isinstance(res, _Failed):
        raise SystemExit(f"{target.__name__} failed in its child process:\n{res.text}")
    return res


def markers(name: str) -> tuple[str, str]:
    """The comments around a generated block named ``name`` on a docs page."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_block(doc: Path, name: str, block: str) -> None:
    """Put ``block`` between the ``markers(name)`` of ``doc`` (written atomically): how
    generated figures land on a page typed by hand."""
    start, end = markers(name)
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{doc} has no {start} … {end} block")
    a, b = text.index(start) + len(start), text.index(end)
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text[:a] + "\n" + block + "\n" + text[b:])
    tmp.replace(doc)
