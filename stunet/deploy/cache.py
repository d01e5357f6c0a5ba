"""Exported graphs cached beside the weights, so that the export is paid once.

The features graph of a network (:mod:`stunet.deploy.export`) goes to a folder named by the checkpoint's SHA-256, the
patch, the engine and its version::

    <weights folder>/stunet-deploy/<sha256[:16]>-<patch, e.g. 128x128x128>-<engine>-<version>/features.onnx
                                                                                              /openvino/ (compiled)

``<weights folder>`` is the folder of the checkpoint file (``fold_0/`` of an nnU-Net model folder, the folder of a
released ``.model``); where it cannot be written, the user's cache folder, ``$XDG_CACHE_HOME/stunet/deploy`` (default
``~/.cache/stunet/deploy``). A network without a checkpoint file (built in memory) is keyed by the SHA-256 of its
weights and cached in the user's cache folder. The checksum of a checkpoint file is recorded (``checksums.json``,
with the file's size and modification time) and computed again only when the file changes. Files are written
atomically: processes that share a folder may export the same graph at once, and each reads a whole one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from stunet.atomic import atomic_write
from stunet.models.network import STUNet

FOLDER = "stunet-deploy"
GRAPH = "features.onnx"
RECORD = "export.json"
CHECKSUMS = "checksums.json"


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/stunet/deploy``, by default ``~/.cache/stunet/deploy``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stunet" / "deploy"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(network: torch.nn.Module) -> str:
    """A checksum of a network's weights (names, shapes, dtypes and values), for networks without a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def writable(folder: Path) -> bool:
    """Whether ``folder`` (or the nearest existing folder above it) accepts new files."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoint_sha256(checkpoint: Path, roots: Sequence[Path]) -> str:
    """The checkpoint's SHA-256, read from a record in ``roots`` while the file's size and modification time are
    unchanged, else computed (and recorded in the first writable root)."""
    resolved = checkpoint.resolve()
    stat = resolved.stat()
    for root in roots:
        entry = _read_json(root / CHECKSUMS).get(str(resolved))
        if isinstance(entry, dict) and entry.get("size") == stat.st_size \
                and entry.get("mtime_ns") == stat.st_mtime_ns and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    sha = file_sha256(resolved)
    root = next((r for r in roots if writable(r)), None)
    if root is not None:
        records = _read_json(root / CHECKSUMS)
        records[str(resolved)] = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        try:
            root.mkdir(parents=True, exist_ok=True)
            atomic_write(root / CHECKSUMS, lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n"))
        except OSError:
            pass  # computed again next time
    return sha


def cache_roots(checkpoint: Path | None) -> list[Path]:
    """Where graphs of ``checkpoint`` may be cached, in order: beside it, then the user's cache folder."""
    roots = [Path(checkpoint).parent / FOLDER] if checkpoint is not None else []
    return roots + [user_cache_root()]


def entry_name(sha: str, patch: Sequence[int], backend: str, version: str) -> str:
    return f"{sha[:16]}-{'x'.join(str(int(p)) for p in patch)}-{backend}-{version}"


def cached_features_graph(network: STUNet, checkpoint: str | Path | None, patch: Sequence[int], backend: str,
                          version: str) -> tuple[Path, Path]:
    """(the features graph of ``network`` for ``patch``, the folder for ``backend``'s compiled model), exported and
    checked with ``backend`` on first use (:func:`stunet.deploy.export.export_graph`)."""
    from stunet.deploy.export import export_graph

    checkpoint = Path(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
    roots = cache_roots(checkpoint)
    sha = checkpoint_sha256(checkpoint, roots) if checkpoint is not None else weights_sha256(network)
    name = entry_name(sha, patch, backend, version)
    for root in roots:  # an entry another process (or a writable moment) left is used wherever it is
        if (root / name / GRAPH).is_file():
            return root / name / GRAPH, root / name / backend
    root = next((r for r in roots if writable(r)), None)
    if root is None:
        raise PermissionError(f"no writable folder for the exported graph ({', '.join(map(str, roots))})")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    record = export_graph(network, folder / GRAPH, patch, "features", check_with=backend)
    record.update(checkpoint=str(checkpoint) if checkpoint else None, sha256=sha)
    atomic_write(folder / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return folder / GRAPH, folder / backend
