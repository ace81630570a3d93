"""Where Export tasks write, confined to the exports folder, and how.

Layout (the local stand-in for Cloud Storage and Drive, under ``exports``):

* ``toCloudStorage(bucket, fileNamePrefix)`` → ``gcs/<bucket>/<fileNamePrefix>.<ext>``: GCS
  object names may hold ``/``, which become sub-folders as gsutil/gcsfs show them.
* ``toDrive(folder, fileNamePrefix)`` → ``drive/<folder>/<fileNamePrefix>.<ext>``: on Drive
  ``folder`` is one literal folder name and ``fileNamePrefix`` one file name, so a ``/`` in
  either does not make sub-folders; the emulator keeps each as ONE path component, writing
  ``/`` as ``%2F`` (and ``%`` as ``%25``). No folder: ``drive/<file>`` (My Drive's root).

Security: every component is checked (no ``..``/``.``/empty/NUL, also after percent-decoding,
so ``%2e%2e`` is refused too; absolute names are refused), directories are created and
entered one at a time with ``O_NOFOLLOW`` relative to the previous one, so no symlink is
ever followed (the emulator creates none), and the file is written to a fresh temp file
(``O_EXCL``) then renamed into place, which replaces a symlink rather than following it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from aether.testing.emulator.values import EEError

_EXT = {"CSV": "csv", "GEO_JSON": "geojson", "GeoJSON": "geojson"}


def extension(fmt: str) -> str:
    return _EXT.get(fmt, "csv")


#: Cloud Storage's limit on an object name (1024 bytes of UTF-8), and the emulator's own on
#: the folders a prefix nests (each one a directory it would create on this disk).
MAX_NAME_BYTES = 1024
MAX_DEPTH = 32


def _check(name: str, what: str) -> str:
    decoded = name
    for _ in range(3):  # %252e%252e decodes twice
        decoded = unquote(decoded)
    parts = decoded.replace("\\", "/").split("/")
    if not name or "\0" in decoded or decoded.startswith(("/", "\\")) or any(
            part in ("", ".", "..") for part in parts):
        raise EEError(f"Invalid {what}: '{name[:200]}'.")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES or len(parts) > MAX_DEPTH:
        raise EEError(f"Invalid {what}: '{name[:80]}...' is longer than {MAX_NAME_BYTES} "
                      f"bytes or nests more than {MAX_DEPTH} folders.")
    return name


def _literal(name: str) -> str:
    """A Drive name as one path component."""
    return name.replace("%", "%25").replace("/", "%2F")


def destination(opts: dict[str, Any], description: str) -> list[str]:
    """The path components under the exports folder of a ``fileExportOptions`` target."""
    fmt = opts.get("fileFormat", "CSV")
    if "cloudStorageDestination" in opts:
        d = opts["cloudStorageDestination"]
        bucket = _check(str(d.get("bucket") or ""), "bucket name")
        if "/" in bucket:
            raise EEError(f"Invalid bucket name: '{bucket}'.")
        prefix = _check(str(d.get("filenamePrefix") or description or "export"),
                        "fileNamePrefix")
        return ["gcs", bucket, *f"{prefix}.{extension(fmt)}".split("/")]
    d = opts.get("driveDestination") or {}
    folder = str(d.get("folder") or "")
    name = _check(str(d.get("filenamePrefix") or description or "export"), "fileNamePrefix")
    parts = ["drive"] + ([_literal(_check(folder, "Drive folder"))] if folder else [])
    return [*parts, _literal(name) + f".{extension(fmt)}"]


@contextmanager
def open_confined(root: Path, parts: list[str]) -> Iterator[tuple[IO[str], Path]]:
    """A text file to write at ``root/parts...``; it appears there only when the block ends.

    Never leaves ``root``, never follows a symlink below it (see the module docstring).
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # resolved at start
    try:
        for part in parts[:-1]:
            with suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise EEError(f"Export destination '{'/'.join(parts)}' is not a folder "
                              "the emulator can write (a symlink or a file is in the way).")\
                    from e
            os.close(fd)
            fd = nxt
        tmp = f".{parts[-1]}.{uuid.uuid4().hex}.tmp"
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666,
                      dir_fd=fd)
        try:
            with os.fdopen(tfd, "w", newline="") as fh:
                yield fh, root.joinpath(*parts)
            os.rename(tmp, parts[-1], src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            raise
    finally:
        os.close(fd)
