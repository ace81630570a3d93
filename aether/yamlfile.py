"""Reading the YAML files users hand to aether (run, task and settings files), with limits.

A file is read as strict UTF-8, at most ``MAX_BYTES`` long, with at most ``MAX_ALIASES``
aliases and at most ``MAX_NODES`` nodes once aliases are expanded: a few hundred bytes of
nested aliases (a "billion laughs" file) would otherwise grow without bound in the code that
walks the data. Every refusal is a ``ConfigError`` naming the file (and the line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aether.errors import ConfigError

MAX_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NODES = 100_000
_HINT = "the file does not parse: fix the syntax (indentation, colons, quotes)"


def load_yaml(path: Path, *, what: str = "file") -> tuple[Any, Any]:
    """``(data, root node)`` of a YAML file; the node gives line numbers for messages."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{what} {path} is {size:,} bytes, above {MAX_BYTES:,}",
                              "a run, task or settings file is a few kilobytes of YAML")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}",
                          "pass the path of a YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        n = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path.name}:{n}: {what} is not UTF-8 text (byte {e.start})",
                          "save the file as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _check_size(root, path)
        return loader.construct_document(root), root
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.name}:{line} invalid YAML: {problem}", _HINT) from None
    except RecursionError:
        raise ConfigError(f"{path.name}: YAML nested too deeply", _HINT) from None
    finally:
        loader.dispose()


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
            n += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        sizes[key] = n
        if n > MAX_NODES:
            raise ConfigError(f"{path.name}:{node.start_mark.line + 1}: YAML expands to more "
                              f"than {MAX_NODES:,} values", "write fewer or no aliases")
        return n

    size(root)
