"""A data directory on object storage (``s3://bucket/prefix``, ``gs://…``, any fsspec URL),
so a cluster's workers share it without a shared disk (``aether run --data-dir URL``).

Why a local mirror, not fsspec paths all the way down: every writer in aether (atomic
renames, ``flock``, Parquet, the checkpoints) stays the one that is tested on local disks,
and object storage only ever gets whole objects, each PUT atomic. A step:

1. takes a **mirror slot** (``<cache>/remote/<url hash>/<n>``, the first one no other
   process on this machine holds: ``store.data_lock``), so workers sharing a machine never
   share a folder;
2. **pulls** its city-year: the mirror is made equal to the remote (objects whose ETag
   changed are fetched, files the remote lacks are removed);
3. runs as on a local data directory;
4. **pushes** what changed, the data first and the commit records last (``manifest.json``
   and ``.aether-steps/``). A reader never sees a record before the objects it names; a push
   cut short leaves the old record, whose checksums then fail, so the step is redone.

One writer at a time: ``Lease``, an object ``<url>/.aether-run.lease`` made with a
conditional create (S3 ``If-None-Match: *``: only one of two racing runs gets it), renewed
by its holder, taken over only once expired (a dead client's lease blocks for ``ttl_s``).
On S3 the renewal and the takeover are conditional on the ETag the caller read; other
backends re-read and compare, which leaves a window of one request between two takers.
Expiry uses the holder's clock: keep clocks within a fraction of ``ttl_s``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aether.errors import InputError, LockedError
from aether.io.store import LOCK_FILE, MANIFEST_FILE, STEPS_DIR, confined, data_lock

log = logging.getLogger(__name__)

LEASE_FILE = ".aether-run.lease"
#: Mirror slots per data directory and machine: more processes than this at once is an error.
SLOTS = 64
_SYNC_DIR = ".aether-sync"  # per slot: what each pulled or pushed file was, by folder


@dataclass(frozen=True)
class RemoteDir:
    """A data directory at an fsspec URL; picklable, so Dask tasks carry it."""

    url: str

    @classmethod
    def of(cls, url: str) -> RemoteDir:
        remote = cls(url.rstrip("/"))
        remote.fs()  # an unknown scheme or a missing backend is one line, before any work
        return remote

    def fs(self) -> tuple[Any, str]:
        """The fsspec filesystem and the directory's path in it."""
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            scheme = self.url.split("://", 1)[0]
            raise InputError(f"cannot open the data directory {self.url}: {e}",
                             f"install the fsspec backend for {scheme}:// (s3fs for s3://, "
                             "gcsfs for gs://)") from None
        return fs, path.rstrip("/")

    def key(self, rel: str) -> str:
        """The object path of ``rel`` (a folder or file below the data directory)."""
        _, base = self.fs()
        return f"{base}/{_safe_rel(rel)}"

    @contextlib.contextmanager
    def workspace(self) -> Iterator[Path]:
        """A mirror slot of this directory that no other process on this machine uses."""
        from aether.settings import cache_dir

        base = cache_dir() / "remote" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        for n in range(SLOTS):
            with contextlib.ExitStack() as stack:
                try:
                    lock = stack.enter_context(data_lock(base / str(n)))
                except LockedError:
                    continue
                yield lock.parent
                return
        raise LockedError(f"all {SLOTS} mirror slots of {self.url} under {base} are in use",
                          "run fewer aether processes on this machine at once")

    def pull(self, local: Path, rel: str) -> int:
        """Make ``local/rel`` equal to the remote's ``rel``; returns the objects fetched."""
        fs, _ = self.fs()
        root = self.key(rel)
        fs.invalidate_cache()
        try:
            remote = {PurePosixPath(p).relative_to(root).as_posix(): info
                      for p, info in fs.find(root, detail=True, withdirs=False).items()}
        except FileNotFoundError:
            remote = {}
        folder = local / _safe_rel(rel)
        state = _State(local, rel)
        fetched = 0
        for name, info in sorted(remote.items()):
            target = confined(folder / _safe_rel(name), local)  # no link planted in a slot
            tag = _tag(info)
            if state.same(name, target, tag):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.pull-{os.getpid()}")
            fs.get_file(f"{root}/{name}", str(tmp))
            os.replace(tmp, target)
            state.mark(name, target, tag)
            fetched += 1
        for name in sorted(set(_local_files(folder)) - set(remote)):
            confined(folder / name, local).unlink()
            state.drop(name)
        state.save()
        log.debug("pulled %s/%s: %d objects fetched", self.url, rel, fetched)
        return fetched

    def push(self, local: Path, rel: str, lease: str | None = None) -> int:
        """Upload what changed in ``local/rel`` since the last pull or push, commit records
        last, after checking that the run still holds the lease ``lease``; returns the
        objects sent. Objects of files removed locally are removed after the records."""
        fs, _ = self.fs()
        root = self.key(rel)
        folder = local / _safe_rel(rel)
        state = _State(local, rel)
        files = _local_files(folder)
        changed = sorted((n for n in files if state.changed(n, folder / n)), key=_commit_last)
        gone = sorted(set(state.names()) - set(files))
        for name in changed:
            if lease is not None and _commit_last(name)[0]:
                Lease(self).check(lease)
            fs.put_file(str(folder / name), f"{root}/{name}")
            fs.invalidate_cache(f"{root}/{name}")
            state.mark(name, folder / name, _tag(fs.info(f"{root}/{name}")))
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{name}")
            state.drop(name)
        state.save()
        log.debug("pushed %s/%s: %d objects sent, %d removed", self.url, rel, len(changed),
                  len(gone))
        return len(changed)


def _safe_rel(rel: str) -> str:
    """A relative object name with no way out of its folder (a hostile listing's ``..``)."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise InputError(f"the remote data directory names an object {rel!r} outside its folder",
                         "remove that object; aether writes none like it")
    return PurePosixPath(*parts).as_posix()


def _local_files(folder: Path) -> list[str]:
    """Regular files below ``folder`` (links are neither followed nor sent), lock files and
    temporary files left out."""
    out: list[str] = []
    if not folder.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink() or f == LOCK_FILE or f.endswith(".lock") or ".pull-" in f:
                continue
            out.append(p.relative_to(folder).as_posix())
    return sorted(out)


def _commit_last(name: str) -> tuple[bool, str]:
    """Sort key: data first, then the records that say a step finished."""
    parts = PurePosixPath(name).parts
    return (parts[-1] == MANIFEST_FILE or STEPS_DIR in parts, name)


def _tag(info: dict[str, Any]) -> str:
    """What identifies an object's content on its store (S3 ETag, GCS md5/generation; a
    local file's size and time)."""
    for k in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(k):
            return str(info[k])
    return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified')}"


class _State:
    """What each file of a mirrored folder was when it was last pulled or pushed: the
    object's tag, and the local file's size and mtime (a changed file is sent)."""

    def __init__(self, local: Path, rel: str) -> None:
        self.path = local / _SYNC_DIR / (hashlib.sha256(rel.encode()).hexdigest()[:24] + ".json")
        try:
            self.files: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.files = {}

    def names(self) -> list[str]:
        return list(self.files)

    @staticmethod
    def _stat(path: Path) -> list[int] | None:
        try:
            st = path.lstat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def same(self, name: str, path: Path, tag: str) -> bool:
        rec = self.files.get(name)
        return rec is not None and rec["tag"] == tag and rec["stat"] == self._stat(path)

    def changed(self, name: str, path: Path) -> bool:
        rec = self.files.get(name)
        return rec is None or rec["stat"] != self._stat(path)

    def mark(self, name: str, path: Path, tag: str) -> None:
        self.files[name] = {"tag": tag, "stat": self._stat(path)}

    def drop(self, name: str) -> None:
        self.files.pop(name, None)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.files, sort_keys=True))
        os.replace(tmp, self.path)


class Lease:
    """The one-writer lease of a remote data directory (see the module doc)."""

    def __init__(self, remote: RemoteDir, ttl_s: float = 120.0) -> None:
        self.remote, self.ttl_s = remote, ttl_s
        self.fs, _ = remote.fs()
        self.path = remote.key(LEASE_FILE)
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop = threading.Event()

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires": time.time() + self.ttl_s}).encode()

    def _read(self) -> tuple[dict[str, Any], str] | None:
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            body = json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            body = {}
        return (body if isinstance(body, dict) else {}), _tag(info)

    def _create(self) -> bool:
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(self._body())
        except FileExistsError:
            return False
        found = self._read()
        self._etag = found[1] if found else None
        return found is not None and found[0].get("token") == self.token

    def acquire(self) -> None:
        """Take the lease, or LockedError naming its holder and when it expires."""
        if self._create():
            return
        found = self._read()
        if found is not None and float(found[0].get("expires", 0)) > time.time():
            held = found[0]
            left = float(held["expires"]) - time.time()
            raise LockedError(
                f"another aether run (host {held.get('host')}, pid {held.get('pid')}) holds "
                f"{self.remote.url} for {left:.0f} s more",
                "wait for it to finish; a run that died frees it when its lease expires")
        if found is not None:  # expired: its holder died; take it over, conditionally
            log.warning("taking over the expired lease of %s (host %s, pid %s)",
                        self.remote.url, found[0].get("host"), found[0].get("pid"))
            self._conditional("delete_object", found[1])
        if not self._create():
            raise LockedError(f"another aether run took the lease of {self.remote.url} "
                              "just now", "wait for it to finish")

    def _conditional(self, method: str, etag: str, body: bytes | None = None) -> None:
        """A delete or put of the lease object that happens only if it is still ``etag``
        (S3's If-Match); elsewhere a re-read and compare."""
        bucket, _, key = self.path.partition("/")
        extra = {"Body": body} if body is not None else {}
        if hasattr(self.fs, "call_s3"):
            try:
                self.fs.call_s3(method, Bucket=bucket, Key=key, IfMatch=etag, **extra)
            except OSError as e:  # s3fs's answer to a failed If-Match
                raise LockedError(f"the lease of {self.remote.url} changed under this run "
                                  f"({e})", "another run holds it now; start again later") from None
            return
        found = self._read()
        if found is None or found[1] != etag:
            raise LockedError(f"the lease of {self.remote.url} changed under this run",
                              "another run holds it now; start again later")
        if body is None:
            self.fs.rm_file(self.path)
        else:
            self.fs.pipe_file(self.path, body)

    def renew(self) -> None:
        """Push the expiry on (the holder does this every ttl/3 while it runs)."""
        assert self._etag is not None
        self._conditional("put_object", self._etag, self._body())
        found = self._read()
        self._etag = found[1] if found else None

    def check(self, token: str) -> None:
        """LockedError unless the run named by ``token`` still holds the lease (a task
        checks this before it commits)."""
        found = self._read()
        if found is None or found[0].get("token") != token:
            raise LockedError(f"the run that sent this task no longer holds the lease on "
                              f"{self.remote.url}", "start the run again (`aether run`)")

    def release(self) -> None:
        if self._etag is not None:
            with contextlib.suppress(LockedError):
                self._conditional("delete_object", self._etag)
            self._etag = None

    @contextlib.contextmanager
    def held(self) -> Iterator[Lease]:
        """Hold the lease for a block, renewed in a background thread."""
        self.acquire()

        def renew() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except LockedError as e:
                    log.error("%s", e)
                    return

        thread = threading.Thread(target=renew, name="aether-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.release()
