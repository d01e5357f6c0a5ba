"""Exported graphs cached beside the weights, so that the export is paid once, and used only once proven to be the
graph of the weights in memory.

The features graph of a network (:mod:`stunet.deploy.export`) goes to one folder per network and patch, named by the
SHA-256 of the network (its architecture and every weight, as loaded) and the patch::

    <weights folder>/stunet-deploy/<sha256[:16]>-<patch, e.g. 128x128x128>/features.onnx   (one copy of the graph)
                                                                         /export.json     (its record)
                                                                         /openvino-<version>/  (compiled)

``<weights folder>`` is the folder of the checkpoint file (``fold_0/`` of an nnU-Net model folder, the folder of a
released ``.model``); where it cannot be written, the user's cache folder, ``$XDG_CACHE_HOME/stunet/deploy`` (default
``~/.cache/stunet/deploy``). It is only a cache: deleting ``stunet-deploy`` or any entry is always safe (the graph is
exported again at its next use), and docs/deployment.md shows how to leave it out of a copied model folder.

The proof: the record holds the network's SHA-256 and the size and SHA-256 of each file of the graph, written with
the graph; a graph is used only when the network's SHA-256 (computed once per load, from the weights themselves, so
a checkpoint replaced after loading changes nothing) and the files' SHA-256 (computed at each use) match the record,
and only after it was checked against PyTorch with the engine that runs it (each engine's check is added to the
record at its first use). An entry that does not match (no record, another network, a changed graph) is exported
again, with a one-line note. A symbolic link anywhere in the cache below the weights folder (the ``stunet-deploy``
folder, an entry, a file of it) is refused: nothing is read or written through one. An entry is filled in a private
folder and moved into place whole, so processes that share a cache may fill it at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch

from stunet.atomic import atomic_write
from stunet.digest import file_sha256
from stunet.errors import CheckpointError
from stunet.models.network import STUNet
from stunet.weights.plain import read_json_file

FOLDER = "stunet-deploy"
GRAPH = "features.onnx"
RECORD = "export.json"


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/stunet/deploy``, by default ``~/.cache/stunet/deploy``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stunet" / "deploy"


def weights_sha256(network: torch.nn.Module) -> str:
    """A checksum of a network: its class and configuration (where it has one), and its weights' names, shapes,
    dtypes and values."""
    digest = hashlib.sha256(f"{type(network).__qualname__}:{getattr(network, 'config', None)!r};".encode())
    for name, tensor in sorted(network.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def writable(folder: Path) -> bool:
    """Whether ``folder`` (or the nearest existing folder above it) accepts new files."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def refuse_links(*paths: Path) -> None:
    """CheckpointError naming the first of ``paths`` that is a symbolic link (dangling or not)."""
    for path in paths:
        if path.is_symlink():
            raise CheckpointError(f"{path}: a symbolic link in the cache of exported graphs; remove it (the cache is "
                                  f"read and written only where it is, never through a link)")


def cache_roots(checkpoint: Path | None) -> list[Path]:
    """Where graphs of ``checkpoint`` may be cached, in order: beside it, then the user's cache folder."""
    roots = [Path(checkpoint).parent / FOLDER] if checkpoint is not None else []
    return roots + [user_cache_root()]


def entry_name(sha: str, patch: Sequence[int]) -> str:
    return f"{sha[:16]}-{'x'.join(str(int(p)) for p in patch)}"


def engine_key(backend: str, version: str) -> str:
    return f"{backend} {version}"


def graph_files(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of the graph and its external weights (if any) in ``folder``."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in (folder / GRAPH, folder / (GRAPH + ".data")) if p.is_file()}


def _mismatch(entry: Path, sha: str) -> tuple[str | None, dict]:
    """Why the entry is not the proven graph of the network ``sha`` (None when it is), and its record."""
    refuse_links(entry, entry / RECORD, entry / GRAPH, entry / (GRAPH + ".data"))
    if not (entry / RECORD).exists():
        return "no record of its export", {}
    try:
        record = read_json_file(entry / RECORD, "the record of an exported graph")
    except CheckpointError as e:
        return str(e), {}
    if record.get("weights_sha256") != sha:
        return "its record names another network", {}
    files = record.get("files")
    if not isinstance(files, dict) or GRAPH not in files or not set(files) <= {GRAPH, GRAPH + ".data"}:
        return "its record lists no graph", {}
    for name, expected in files.items():
        path = entry / name
        if not path.is_file() or not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes") \
                or file_sha256(path) != expected.get("sha256"):
            return f"{name} differs from the one its record describes", {}
    return None, record


def _export_entry(network: STUNet, root: Path, name: str, patch: list[int], backend: str, version: str,
                  sha: str, checkpoint: Path | None) -> None:
    """Export and check the graph in a private folder under ``root``, then move it into place as ``root/name`` (an
    entry already there is replaced)."""
    from stunet.deploy.export import export_graph

    refuse_links(root)
    root.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    try:
        export = export_graph(network, private / GRAPH, patch, "features", check_with=backend)
        check = export.pop("check")
        record = {**export, "checkpoint": str(checkpoint) if checkpoint else None, "weights_sha256": sha,
                  "files": graph_files(private), "checks": {engine_key(backend, version): check}}
        (private / RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        entry = root / name
        if entry.exists() or entry.is_symlink():
            stale = Path(tempfile.mkdtemp(dir=root, prefix=".stale-"))
            os.replace(entry, stale / name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(private, entry)
        except OSError:  # another process moved its entry into place first: theirs is used (and checked)
            pass
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _check_engine(network: STUNet, entry: Path, record: dict, patch: list[int], backend: str, version: str) -> None:
    """Check the entry's graph against PyTorch with an engine that has not run it yet, and add the check to its
    record (where the folder can be written)."""
    from stunet.deploy.export import compare

    record.setdefault("checks", {})[engine_key(backend, version)] = compare(entry / GRAPH, network, patch,
                                                                            "features", backend)
    if writable(entry):
        try:
            atomic_write(entry / RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=2, allow_nan=False)
                                                                    + "\n"))
        except OSError:
            pass  # checked again next time


def _use(network: STUNet, entry: Path, record: dict, patch: list[int], backend: str, version: str
         ) -> tuple[Path, Path, str]:
    compiled = entry / f"{backend}-{version}"
    refuse_links(compiled)
    if engine_key(backend, version) not in record.get("checks", {}):
        _check_engine(network, entry, record, patch, backend, version)
    return entry / GRAPH, compiled, record["files"][GRAPH]["sha256"]


def cached_features_graph(network: STUNet, checkpoint: str | Path | None, patch: Sequence[int], backend: str,
                          version: str) -> tuple[Path, Path, str]:
    """(the features graph of ``network`` for ``patch``, the folder for ``backend``'s compiled model, the graph's
    SHA-256): proven to be this network's (see the module), exported and checked with ``backend`` where it is not."""
    checkpoint = Path(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
    patch = [int(p) for p in patch]
    roots = cache_roots(checkpoint)
    sha = weights_sha256(network)
    name = entry_name(sha, patch)
    stale = []
    for root in roots:  # an entry another process (or a writable moment) left is used wherever it is
        refuse_links(root)
        entry = root / name
        if not (entry.exists() or entry.is_symlink()):
            continue
        why, record = _mismatch(entry, sha)
        if why is None:
            return _use(network, entry, record, patch, backend, version)
        stale.append(f"{entry}: {why}")
    root = next((r for r in roots if writable(r)), None)
    if root is None:
        raise PermissionError(f"no writable folder for the exported graph ({', '.join(map(str, roots))})")
    for note in stale:
        warnings.warn(f"{note}; not used, the graph is exported again", stacklevel=3)
    _export_entry(network, root, name, patch, backend, version, sha, checkpoint)
    why, record = _mismatch(root / name, sha)
    if why is not None:
        raise CheckpointError(f"{root / name}: the graph just exported does not match its record ({why}); another "
                              f"process may be writing the cache: run again")
    return _use(network, root / name, record, patch, backend, version)
