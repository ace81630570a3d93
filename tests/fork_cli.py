"""Run many ``aether`` command lines fast: each in its own process, forked from one interpreter
that imported aether once.

Each case is a real process running the real entry point (``aether.cli.main``): its own exit
code, stdout and stderr (files, not pipes), environment, working directory and an empty
stdin, so a traceback, a hang or a crash shows as it would from a shell. What it saves is the
~1 s of interpreter start and imports per case, which makes a fuzz test of a hundred command
lines take seconds instead of minutes. POSIX only (``os.fork``).

Used as a script (``python tests/fork_cli.py < cases.json``; ``run_forked`` does that): reads
a JSON object ``{"cases": [{"argv", "env", "cwd", "timeout"}...], "watch": [dirs]}`` on
stdin; writes a JSON list with, per case, ``rc`` (``None`` if it was killed at its timeout),
``stdout``, ``stderr``, ``seconds`` and ``changed``: the entries of the watched folders that a
case added, removed or modified (by ``lstat``: type, size, mtime, link target; nothing is
opened, so a FIFO there is safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

#: Modules most commands import: imported once before the first fork.
WARM = ("aether.cli", "aether.settings", "aether.yamlfile", "aether.pipeline.runfile",
        "aether.pipeline.status", "aether.pipeline.scheduled")


def snapshot(roots: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                link = os.readlink(p) if os.path.islink(p) else ""
                out[p] = f"{st.st_mode:o} {st.st_size} {st.st_mtime_ns} {link}"
    return out


def _child(case: dict[str, Any], out: str, err: str) -> None:
    """In the forked process: become the command line, never return."""
    code: Any = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        os.chdir(case.get("cwd") or ".")
        os.environ.update(case.get("env") or {})
        sys.argv = ["aether", *case["argv"]]
        from aether.cli import main

        main()
        code = 0
    except SystemExit as e:  # as the interpreter would map it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # nothing more to do in a dying child
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def run_cases(cases: list[dict[str, Any]], watch: list[str]) -> list[dict[str, Any]]:
    import importlib

    for name in WARM:
        importlib.import_module(name)
    results = []
    with tempfile.TemporaryDirectory(prefix="fork-cli-") as tmp:
        out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        for case in cases:
            before = snapshot(watch)
            t0 = time.monotonic()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(case, out, err)
            rc: int | None = None
            deadline = t0 + float(case.get("timeout", 60))
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    rc = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
            after = snapshot(watch)
            changed = sorted(k for k in before.keys() | after.keys()
                             if before.get(k) != after.get(k))
            results.append({"rc": rc, "seconds": time.monotonic() - t0, "changed": changed,
                            "stdout": Path(out).read_text(errors="replace"),
                            "stderr": Path(err).read_text(errors="replace")})
    return results


def run_forked(cases: list[dict[str, Any]], watch: list[Path], *,
               env: dict[str, str] | None = None, timeout: float = 600) -> list[dict[str, Any]]:
    """Run ``cases`` through this script in one subprocess; the per-case results."""
    payload = json.dumps({"cases": cases, "watch": [str(w) for w in watch]})
    r = subprocess.run([sys.executable, __file__], input=payload, capture_output=True,
                       text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    results: list[dict[str, Any]] = json.loads(r.stdout)
    return results


if __name__ == "__main__":
    job = json.load(sys.stdin)
    res = run_cases(job["cases"], job["watch"])
    sys.stdout.write(json.dumps(res))
