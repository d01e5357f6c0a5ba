"""Plain JSON-shaped data from untrusted files: plans, dataset.json and checkpoint metadata are type-checked and
copied with bounded size and depth (shared references cannot explode in a later walk or JSON writer).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stunet.errors import CheckpointError
from stunet.io.json_file import read_json
from stunet.weights.pickle_guard import MIB

MAX_PLAIN_NODES = 100_000  # values in plans / dataset.json / metadata, shared references counted each time


MAX_PLAIN_TEXT = 64 * MIB


MAX_PLAIN_DEPTH = 64


# -- structure checks of what was loaded --------------------------------------------------------------------------
class _Plain:
    """Copies JSON-shaped data (numpy values turned into Python ones), refusing anything else, cycles, depth over
    MAX_PLAIN_DEPTH and more than MAX_PLAIN_NODES values counted as a tree (so that shared references, which a later
    walk or JSON writer would expand, cannot explode). Where a value sits is kept as a (parent, key) chain, spelled
    out only in an error."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.nodes, self.text, self.active = path, what, 0, 0, set()

    def fail(self, where, reason: str):
        keys = []
        while where:
            where, key = where
            keys.append(f"[{key!r:.40}]")
        raise CheckpointError(f"{self.path}: {self.what} is not plain data: {reason} at "
                              f"{''.join(reversed(keys)) or 'the top'}; a damaged or crafted file")

    def count(self, where, nodes: int = 1, text: int = 0) -> None:
        self.nodes += nodes
        self.text += text
        if self.nodes > MAX_PLAIN_NODES:
            self.fail(where, f"more than {MAX_PLAIN_NODES:,} values (shared references counted each time)")
        if self.text > MAX_PLAIN_TEXT:
            self.fail(where, f"more than {MAX_PLAIN_TEXT // MIB} MiB of text")

    def key(self, key, where):
        if isinstance(key, (np.integer, np.bool_)):
            key = key.item()
        if isinstance(key, str):
            self.count(where, 1, len(key))
            return key
        if isinstance(key, int) and not isinstance(key, bool) and abs(key) < 2 ** 63:
            return key
        self.fail(where, f"a key of type {type(key).__name__}")

    def copy(self, obj, where=None, depth: int = 0):
        self.nodes += 1
        if self.nodes > MAX_PLAIN_NODES:
            self.count(where, 0)
        kind = type(obj)
        if obj is None or kind is bool or kind is float:
            return obj
        if kind is str:
            self.count(where, 0, len(obj))
            return obj
        if kind is int:
            if abs(obj) >= 2 ** 64:
                self.fail(where, "an integer of more than 64 bits")
            return obj
        if isinstance(obj, np.generic) and obj.dtype.kind in "biufUS":
            return self.copy(obj.item(), where, depth)
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biufUS":
                self.fail(where, f"a numpy array of dtype {obj.dtype}")
            self.count(where, obj.size, obj.nbytes if obj.dtype.kind in "US" else 0)
            return obj.tolist()
        if depth >= MAX_PLAIN_DEPTH:
            self.fail(where, f"nesting deeper than {MAX_PLAIN_DEPTH} levels")
        if id(obj) in self.active:
            self.fail(where, "a cycle")
        if isinstance(obj, dict):
            self.active.add(id(obj))
            out = {}
            for k, v in obj.items():
                key = self.key(k, where)
                out[key] = self.copy(v, (where, key), depth + 1)
            self.active.discard(id(obj))
            return out
        if isinstance(obj, (list, tuple)):
            self.active.add(id(obj))
            out = [self.copy(v, (where, i), depth + 1) for i, v in enumerate(obj)]
            self.active.discard(id(obj))
            return out
        if isinstance(obj, (str, int, float)):  # subclasses (IntEnum, numpy-free float subclasses): their plain value
            return self.copy({str: str, int: int, float: float}[next(t for t in (bool, int, float, str)
                                                                     if isinstance(obj, t))](obj), where, depth)
        self.fail(where, f"a {type(obj).__module__}.{type(obj).__qualname__}")


def plain_data(obj, path: Path, what: str):
    """A bounded copy of JSON-shaped ``obj`` (dict keys: str or int), or CheckpointError naming ``path``."""
    return _Plain(Path(path), what).copy(obj)


def read_json_file(path: str | Path, what: str = "the file") -> dict:
    """A JSON object from ``path`` (a model folder's plans.json / dataset.json, a sidecar), checked like the plans
    inside a checkpoint: plain, bounded data; CheckpointError naming the file otherwise. Only a regular file of at
    most MAX_PLAIN_TEXT bytes is read (a FIFO, a device or a link to one is refused without waiting on it)."""
    path = Path(path)
    try:
        content = read_json(path, MAX_PLAIN_TEXT)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from e
    content = plain_data(content, path, what)
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content
