"""Small JSON files found beside images (``labels.json``, ``dataset.json``, ``case.statistics.json``), read only
when they are regular files of bounded size: a FIFO or a link to ``/dev/zero`` in their place cannot hold the reader.
An object that holds one key twice is refused (JSON parsers would silently keep one of the two values).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import stat

MAX_JSON_BYTES = 64 << 20


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} appears twice in one object")
        data[key] = value
    return data


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in ``path``; ValueError naming the file when it is not a regular file (a FIFO, a device, a
    folder), holds more than ``max_bytes``, or is not valid JSON (an object with a key twice included); OSError when
    it cannot be opened."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file (a FIFO, a device or a folder); JSON is read only from one")
        if info.st_size > max_bytes:
            raise ValueError(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} a JSON file here may hold")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: more than the {max_bytes:,} bytes a JSON file here may hold")
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not valid JSON ({str(e).splitlines()[0][:160] or type(e).__name__})") from None
