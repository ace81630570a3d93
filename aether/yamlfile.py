"""Reading the YAML files users hand to aether (run, task and settings files), with limits.

A file is a regular file (not ``/dev/zero``, a FIFO or a directory: checked on the open
descriptor, which is opened without blocking, before a byte is read), read as strict UTF-8,
at most ``MAX_BYTES`` long (however much the file holds or grows while it is read), with at
most ``MAX_ALIASES`` aliases and at most ``MAX_NODES`` nodes once aliases are expanded: a few
hundred bytes of nested aliases (a "billion laughs" file) would otherwise grow without bound
in the code that walks the data. A mapping that repeats a key is refused (YAML would keep the
last value silently). Every refusal is a ``ConfigError`` naming the file (and the line).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from aether.errors import ConfigError

MAX_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NODES = 100_000
_HINT = "the file does not parse: fix the syntax (indentation, colons, quotes)"


def load_yaml(path: Path, *, what: str = "file") -> tuple[Any, Any]:
    """``(data, root node)`` of a YAML file; the node gives line numbers for messages.

    libyaml's parser is used where PyYAML has it (the pure-Python one otherwise): its events
    are counted first, so a file of more than ``MAX_NODES`` written-out values is refused
    before a node is built (building 150,000 nodes in Python takes seconds).
    """
    import yaml

    raw = read_limited(path, what=what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        n = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path.name}:{n}: {what} is not UTF-8 text (byte {e.start})",
                          "save the file as UTF-8") from None
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = None
    try:
        _check_event_count(loader_cls, text, path)
        loader = loader_cls(text)  # the pure-Python reader checks characters here already
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_size(root, path)
        return loader.construct_document(root), root
    except yaml.YAMLError as e:
        raise ConfigError(f"{path.name}:{_line(e, text)} invalid YAML: {_problem(e)}",
                          _HINT) from None
    except RecursionError:
        raise ConfigError(f"{path.name}: YAML nested too deeply", _HINT) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_event_count(loader_cls: Any, text: str, path: Path) -> None:
    """Refuse more than ``MAX_NODES`` values as written (before aliases), from the parser's
    events alone: no node is built. Aliases are counted by ``_check_size`` afterwards."""
    import yaml

    loader = loader_cls(text)
    try:
        nodes = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    mark = event.start_mark
                    line = f"{mark.line + 1}:" if mark is not None else ""
                    raise ConfigError(f"{path.name}:{line} YAML holds "
                                      f"more than {MAX_NODES:,} values",
                                      "a run, task or settings file is a few kilobytes")
    finally:
        loader.dispose()


def _line(e: Any, text: str) -> str:
    """``"N:"``, the line of a YAML error where it has one, else ``""``."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        return f"{mark.line + 1}:"
    position = getattr(e, "position", None)  # a ReaderError: a character index
    if isinstance(position, int):
        return f"{text[:position].count(chr(10)) + 1}:"
    return ""


def _problem(e: Any) -> str:
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return " ".join(str(problem).split())


def read_limited(path: Path, *, what: str = "file", limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else a ConfigError.

    The file is opened with ``O_NONBLOCK`` (a FIFO with no writer would block the open) and
    checked with ``fstat`` on that descriptor (no race with a swap of the path), and at most
    ``limit + 1`` bytes are ever read, so a file that grows past its ``stat`` size is refused
    too.
    """
    too_big = "a run, task or settings file is a few kilobytes of YAML"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}",
                          "pass the path of a YAML file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                    "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                    "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise ConfigError(f"{what} {path} is {kind}, not a regular file",
                              "pass the path of a YAML file")
        if st.st_size > limit:
            raise ConfigError(f"{what} {path} is {st.st_size:,} bytes, above {limit:,}",
                              too_big)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}",
                          "pass the path of a YAML file") from None
    finally:
        os.close(fd)
    if got > limit:
        raise ConfigError(f"{what} {path} holds more than {limit:,} bytes", too_big)
    return b"".join(chunks)


def _check_size(root: Any, path: Path) -> None:
    """Refuse too many aliases, recursive aliases, and documents too large once expanded."""
    import yaml

    sizes: dict[int, int] = {}
    seen: set[int] = set()
    aliases = 0
    active: set[int] = set()

    def size(node: Any) -> int:
        nonlocal aliases
        key = id(node)
        if key in seen:  # a second reference to a node is an alias
            aliases += 1
            if aliases > MAX_ALIASES:
                raise ConfigError(f"{path.name}:{node.start_mark.line + 1}: more than "
                                  f"{MAX_ALIASES} YAML aliases", "write the values out")
            if key in active:
                raise ConfigError(f"{path.name}:{node.start_mark.line + 1}: recursive YAML "
                                  "alias", "write the values out")
            return sizes[key]
        seen.add(key)
        active.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(v) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, path)
            n += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = n
        if n > MAX_NODES:
            raise ConfigError(f"{path.name}:{node.start_mark.line + 1}: YAML expands to more "
                              f"than {MAX_NODES:,} values", "write fewer or no aliases")
        return n

    size(root)


def _check_unique_keys(node: Any, path: Path) -> None:
    """A key written twice in one mapping (YAML keeps the last value, silently) is refused."""
    import yaml

    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        first = seen.get((key.tag, key.value))
        if first is not None:
            raise ConfigError(f"{path.name}:{line}: key {key.value!r} is given twice "
                              f"(first on line {first})",
                              "keep one of them: YAML would use the last one silently")
        seen[(key.tag, key.value)] = line
