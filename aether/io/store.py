"""The data layout: every file and folder aether keeps for a city-year, named in one place.

``CityStore(root, slug, year)`` is ``<root>/<slug>/<year>/``; every step asks it for its
paths instead of joining names itself, so the layout (docs/formats.md) has one owner.
Grids are found by their cell spec (``100m``, ``h3r9``), and trained models count only when
complete. ``data_lock`` is the one lock every writer of a data directory holds.

aether makes no symbolic links inside a data directory, so it follows none: every path a
store hands out is ``confined`` — no component of it below the data directory (the city,
the year, ``.work``, ``models``, a run, a table) may be a link, or LinkError names it. A link
planted there (``.work -> /tmp/V``) would otherwise make a write, or the ``--force``
clean-up, reach outside the data directory. The data directory itself may be a link.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aether.core.cells import CellSpec, parse_cell
from aether.errors import InputError, LinkError, LockedError

log = logging.getLogger(__name__)

LOCK_FILE = ".aether-run.lock"
RUNS_DIR = "runs"
SAMPLE_DIR = "_sample"  # the offline sample city's tiles and PBF, in the data directory
POIS_FILE = "pois.parquet"
POI_EMBEDDINGS_FILE = "poi_embeddings.parquet"
MANIFEST_FILE = "manifest.json"
TEXT_EMBEDDINGS_FILE = "text_embeddings.parquet"
BASEMAP_FILE = "basemap.parquet"
STEPS_DIR = ".aether-steps"
WORK_DIR = ".work"
MODELS_DIR = "models"
ENCODED_DIR = "aether"
EVAL_DIR = "evaluation"
EVAL_CACHE_DIR = ".cache"
MAPS_DIR = "maps"
LABELS_DIR = "labels"
GRID_PREFIX = "grid_embeddings_"
ENCODED_GRID_PREFIX = "grid_"
#: The files of a trained model; a run directory is usable only with its config and weights.
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
_PARTIAL = ".partial"


def confined(path: Path, root: Path) -> Path:
    """``path`` itself, once none of its components below ``root`` is a symbolic link (or
    ``..``); LinkError naming the first link otherwise. Components that do not exist yet
    are fine: aether creates them as real folders and files."""
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return path  # not inside this data directory: nothing to confine it to
    at = root
    for part in parts:
        if part == "..":
            raise LinkError(f"{path} leaves the data directory {root}",
                            "name a place inside the data directory")
        at = at / part
        if at.is_symlink():
            try:
                target = os.readlink(at)
            except OSError:
                target = "?"
            raise LinkError(f"{at} is a symbolic link (to {target}) inside the data directory; "
                            "aether does not follow links it did not make",
                            f"remove the link (rm {at}) or move the real folder there")
    return path


def _cell_order(spec: CellSpec) -> tuple[int, float]:
    """Smallest cells first: square cells by size, then H3 from the finest resolution."""
    return (0, spec.size) if spec.kind == "square" else (1, -spec.size)


def _cells_named(folder: Path, prefix: str) -> list[CellSpec]:
    """The cell specs of the ``<prefix><label>.parquet`` tables in a folder."""
    found = []
    for p in folder.glob(f"{prefix}*.parquet"):
        if p.is_symlink():
            continue  # not one aether made
        label = p.name[len(prefix):-len(".parquet")]
        try:
            found.append(parse_cell(label))
        except InputError:
            continue  # not one of ours (another tool's file beside the tables)
    return sorted(set(found), key=_cell_order)


@dataclass(frozen=True)
class CityStore:
    """The folder of one city-year and the name of everything in it."""

    root: Path
    slug: str
    year: int | None
    folder: Path | None = field(default=None, repr=False)  # set by ``at``

    @classmethod
    def at(cls, city_dir: str | os.PathLike[str]) -> CityStore:
        """The store whose folder is ``city_dir`` (normally ``<root>/<slug>/<year>``)."""
        d = Path(city_dir)
        return cls(d.parent.parent, d.parent.name, int(d.name) if d.name.isdigit() else None,
                   d)

    @classmethod
    def of(cls, root: Path, slug: str, year: int) -> CityStore:
        """The store of a slug and year, the slug checked to be one safe path component."""
        from aether.settings import check_slug

        return cls(Path(root), check_slug(slug), year)

    @property
    def dir(self) -> Path:
        """``<root>/<slug>/<year>``, neither of them a symbolic link (see ``confined``)."""
        return self._at()

    def _at(self, *parts: str) -> Path:
        """A path in this city-year's folder, no component of it a symbolic link (each
        component checked once)."""
        base = self.folder or self.root / self.slug / str(self.year)
        return confined(base.joinpath(*parts), self.root)

    # --- the extract's tables ------------------------------------------------------------
    @property
    def pois(self) -> Path:
        return self._at(POIS_FILE)

    @property
    def poi_embeddings(self) -> Path:
        return self._at(POI_EMBEDDINGS_FILE)

    @property
    def manifest(self) -> Path:
        return self._at(MANIFEST_FILE)

    @property
    def text_embeddings(self) -> Path:
        """The cache of frozen text vectors of this city's POI texts and queries."""
        return self._at(TEXT_EMBEDDINGS_FILE)

    @property
    def basemap(self) -> Path:
        """Roads, water and green of the POIs' PBF, drawn under maps."""
        return self._at(BASEMAP_FILE)

    def work(self, source: str) -> Path:
        """A source's checkpoints and task book (resumable work, not results)."""
        return self._at(WORK_DIR, source)

    @property
    def steps(self) -> Path:
        """Step records of scheduled runs (``<step>.json``)."""
        return self._at(STEPS_DIR)

    def step(self, name: str) -> Path:
        return self._at(STEPS_DIR, f"{name}.json")

    # --- grids ---------------------------------------------------------------------------
    def grid(self, cell: str | float | CellSpec) -> Path:
        """``grid_embeddings_100m.parquet``, ``grid_embeddings_h3r9.parquet``."""
        return self._at(f"{GRID_PREFIX}{parse_cell(cell).label}.parquet")

    def grids(self) -> list[CellSpec]:
        """The cell specs of the grids present, smallest cells first."""
        return _cells_named(self.dir, GRID_PREFIX)

    # --- models and their outputs --------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self._at(MODELS_DIR)

    def model(self, name: str) -> Path:
        return self._at(MODELS_DIR, name)

    def model_partial(self, name: str) -> Path:
        """Where a model is built (and resumed) until it is complete and renamed."""
        return self._at(MODELS_DIR, f".{name}{_PARTIAL}")

    def models(self) -> list[str]:
        """Names of the complete models, sorted; incomplete ones are logged and skipped."""
        names: list[str] = []
        broken: list[str] = []
        for d in sorted(self.models_dir.glob("[!.]*")):
            if d.is_dir() and not d.is_symlink():
                (names if model_complete(d) else broken).append(d.name)
        if broken:
            log.warning("skipping incomplete model(s) in %s: %s (re-run `aether train`)",
                        self.models_dir, ", ".join(broken))
        return names

    def encoded_dir(self, name: str) -> Path:
        return self._at(ENCODED_DIR, name)

    def encoded_pois(self, name: str) -> Path:
        return self._at(ENCODED_DIR, name, POIS_FILE)

    def encoded(self, name: str, cell: str | float | CellSpec) -> Path:
        """A model's encoded grid: ``aether/<model>/grid_<label>.parquet``."""
        return self._at(ENCODED_DIR, name,
                        f"{ENCODED_GRID_PREFIX}{parse_cell(cell).label}.parquet")

    def encoded_cells(self, name: str) -> list[CellSpec]:
        """The cell specs a model's grids were encoded at, smallest cells first."""
        return _cells_named(self.encoded_dir(name), ENCODED_GRID_PREFIX)

    # --- evaluation, maps, labels --------------------------------------------------------
    @property
    def evaluation_dir(self) -> Path:
        return self._at(EVAL_DIR)

    def evaluation(self, stem: str, suffix: str) -> Path:
        return self._at(EVAL_DIR, f"{stem}.{suffix}")

    def evaluation_cache(self, stem: str, key: str) -> Path:
        """One cached result per (task, inputs key): alternating model sets cost nothing."""
        return self._at(EVAL_DIR, EVAL_CACHE_DIR, f"{stem}-{key}.json")

    @property
    def maps_dir(self) -> Path:
        return self._at(MAPS_DIR)

    def labels(self, name: str) -> Path:
        return self._at(LABELS_DIR, f"{name}.parquet")

    # --- the data directory --------------------------------------------------------------
    @property
    def lock(self) -> Path:
        """The data directory's lock: one writer at a time, whatever the city-year (a
        folder outside a data directory is its own)."""
        return lock_path(self.root if self.folder is None or self.year is not None
                         else self.folder)

    def locked(self) -> contextlib.AbstractContextManager[Path]:
        """Hold the lock while writing this city-year (see ``data_lock``)."""
        return data_lock(self.lock.parent)


def model_complete(run_dir: Path) -> bool:
    """A run directory holds a usable model: its config and weights."""
    return all((run_dir / f).is_file() for f in (MODEL_CONFIG, MODEL_WEIGHTS))


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_FILE


def runs_dir(root: Path) -> Path:
    """Where ``aether run`` writes its reports (not through a link: see ``confined``)."""
    return confined(Path(root) / RUNS_DIR, Path(root))


def run_ledger(root: Path, run_id: str) -> Path:
    """The Earth Engine usage ledger of one run (``execution.budget``), beside its report."""
    return runs_dir(root) / f"{run_id}.eecu.jsonl"


def new_run_id(prefix: str = "") -> str:
    """A run's id: the UTC time it started and this process (unique on one machine)."""
    return f"{prefix}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<path>.lock`` around a read-modify-write of ``path`` that
    several processes share (a ledger, a task book); the lock file is never followed through
    a link."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_held: dict[Path, int] = {}  # data directories this process holds the lock of (re-entrant)


@contextlib.contextmanager
def data_lock(root: Path) -> Iterator[Path]:
    """Hold ``<root>/.aether-run.lock``; LockedError at once if another process holds it.

    Re-entrant within a process (``aether run`` holds it while its steps take it again).
    The lock file is opened without following a symlink, and only a lock file aether made
    (empty or a pid) is written to, so a planted link or file is never truncated.
    """
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = lock_path(root)
    key = path.resolve()
    if _held.get(key):
        lease_check()()  # a worker's task writes only while its run still holds the lock
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    for _ in range(3):  # a holder may remove the file between our open and our flock
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(f"another aether run (pid {holder}) is writing to {root}",
                              "wait for it to finish; the lock is freed when it exits") from None
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        raise LockedError(f"the lock file {path} keeps changing", "retry in a moment")
    ours = _is_lock_file(fd)
    _held[key] = 1
    try:
        if ours:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        _held.pop(key, None)
        if ours:  # removed while held, so a failed command leaves the data dir as it was
            with contextlib.suppress(OSError):
                path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def lock_token(root: Path) -> str:
    """The name of the lock this process holds on ``root`` (its file's inode and content):
    handed to the tasks a run sends to Dask workers, which write under it (``lent_lock``)."""
    path = lock_path(root)
    key = path.resolve()
    if not _held.get(key):
        raise LockedError(f"this process holds no lock on {root}", "take it with data_lock")
    return _token(path)


def _token(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        return f"{os.fstat(fd).st_ino}:{os.pread(fd, 32, 0).decode(errors='replace').strip()}"
    finally:
        os.close(fd)


@contextlib.contextmanager
def lent_lock(root: Path, token: str) -> Iterator[Path]:
    """Write under the lock another process (the run's client) holds on ``root``, as long as
    it still holds the one named by ``token``: a worker's steps take ``data_lock`` again
    inside, re-entrantly. LockedError when that lock is gone (the run ended or died)."""
    path = lock_path(root)
    _check_token(path, token)
    key = path.resolve()
    _held[key] = _held.get(key, 0) + 1
    lent = _LENT.set((path, token))
    try:
        yield path
    finally:
        _LENT.reset(lent)
        _held[key] -= 1
        if not _held[key]:
            _held.pop(key)


#: The lock a Dask task writes under (set by ``lent_lock`` in the task's thread).
_LENT: contextvars.ContextVar[tuple[Path, str] | None] = contextvars.ContextVar(
    "aether_lent_lock", default=None)


def _check_token(path: Path, token: str) -> None:
    try:
        held = _token(path)
    except OSError:
        held = None
    if held != token:
        raise LockedError(f"the run that sent this task no longer holds the lock on "
                          f"{path.parent}", "start the run again (`aether run`)")


def lease_check() -> Callable[[], None]:
    """A check, callable from any thread, that the run which lent this task its lock still
    holds it (LockedError once it ended or died): taken where the task starts, called before
    anything that must not happen twice (a table's commit, an Earth Engine task's start).
    Outside a lent lock it checks nothing: the process holds the lock itself."""
    lent = _LENT.get()
    if lent is None:
        return lambda: None
    path, token = lent
    return lambda: _check_token(path, token)


def _same_file(fd: int, path: Path) -> bool:
    """True while ``path`` still names the open file (it was not removed or replaced)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return os.fstat(fd).st_ino == st.st_ino and os.fstat(fd).st_dev == st.st_dev


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise LockedError(f"the lock file {path} is a symbolic link",
                            "remove it; aether creates its own lock file") from None
        raise LockedError(f"cannot open the lock file {path}: {e.strerror}",
                        "check the data directory's permissions") from None


def _is_lock_file(fd: int) -> bool:
    """True for a regular, single-link file holding nothing but a pid: one aether made."""
    import stat

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > 32:
        return False
    return os.pread(fd, 32, 0).strip().isdigit() or st.st_size == 0

