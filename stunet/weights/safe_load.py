"""Unpickling released checkpoints without running their code.

Pickle-based files (nnU-Net v1 ``.model`` and ``.model.pkl``, v2 ``checkpoint_*.pth``, torch archives) are read
safely by default: only tensors, plain containers and numpy scalars/arrays (what the known formats hold) are rebuilt,
so a crafted file cannot run code. Before anything is unpickled, :mod:`stunet.weights.pickle_guard` walks the pickle's
opcodes and refuses globals outside the allowlist, arguments outside what real files hold (object dtypes, other
codecs, arrays larger than their bytes) and anything over its size limits (reference bombs, huge memos); torch
archives are checked first (every declared tensor storage against the bytes the archive really holds, no zip bombs).

``trust=True`` unpickles with full trust, for files whose origin you trust that hold other objects; the size limits
and the structure checks still apply.
"""
from __future__ import annotations

import codecs
import collections
import io
from pathlib import Path
import pickle
import re
from typing import Any
import zipfile

import numpy as np
import torch

from stunet.archives import ZipLimits, ZipRefused, check_zip_sizes
from stunet.errors import CheckpointError
from stunet.weights.pickle_guard import PickleRefused, constant, inspect_pickle
from stunet.weights.plain import plain_data

_np_core = getattr(np, "_core", None) or np.core


# the globals nnU-Net's pickles need beyond torch's own weights_only set, under numpy 2 and numpy 1 names
_NUMPY_GLOBALS = {
    "numpy.dtype": np.dtype,
    "numpy.ndarray": np.ndarray,
    "numpy._core.multiarray.scalar": _np_core.multiarray.scalar,
    "numpy.core.multiarray.scalar": _np_core.multiarray.scalar,
    "numpy._core.multiarray._reconstruct": _np_core.multiarray._reconstruct,
    "numpy.core.multiarray._reconstruct": _np_core.multiarray._reconstruct,
    **{f"numpy.dtypes.{name}": getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")},
}


# protocol-2 pickles rebuild bytes with _codecs.encode(str, encoding), which torch's weights_only loader allows too
_PICKLE_GLOBALS = {**_NUMPY_GLOBALS, "collections.OrderedDict": collections.OrderedDict,
                   "_codecs.encode": codecs.encode}


TRUST_HINT = ("If you trust the origin of this file, load it with --trust-checkpoint (in Python "
              "create_model(..., trust_checkpoint=True) or load_checkpoint(..., trust=True); "
              "STUNET_TRUST_CHECKPOINT=1 for nnUNetv2_train), which unpickles it with full trust.")


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[f"{module}.{name}"]
        except KeyError:
            raise pickle.UnpicklingError(f"unsupported global {module}.{name}") from None


# -- bounds -------------------------------------------------------------------------------------------------------
from stunet.weights.pickle_guard import MIB

MAX_PICKLE_BYTES = 256 * MIB  # a .pkl file, or the data.pkl of a torch archive (real: under 1 MiB)


MAX_ARCHIVE_BYTES = 64 << 30  # all members of a torch archive, uncompressed (the largest release: 1.6 GB)


MAX_COMPRESSION_RATIO = 100  # each member and the whole archive (torch stores members; deflate reaches 1000x on zeros)
ARCHIVE_LIMITS = ZipLimits(MAX_ARCHIVE_BYTES, MAX_COMPRESSION_RATIO, ratio_from_bytes=MIB)


_TORCH_MAGIC = 0x1950a86a20f9469cfc6c  # the first pickle of a legacy (non-zip) torch file


def _refused(path: Path, e: PickleRefused) -> CheckpointError:
    text = str(e)
    if text.startswith(("it references", "calls ", "builds ", "rebuilds ", "sets ", "holds a", "adds ", "uses ")):
        return CheckpointError(f"{path}: refused to unpickle it ({text}): the safe loader only rebuilds tensors, "
                               f"containers and numpy values of numbers and strings, which is all that nnU-Net and "
                               f"stunet checkpoints hold. {TRUST_HINT}")
    return CheckpointError(f"{path}: refused to unpickle it ({text}); a damaged or crafted file, not a checkpoint "
                           f"as nnU-Net or stunet write them (--trust-checkpoint does not lift this limit)")


def read_pickle(path: str | Path, trust: bool = False) -> Any:
    """A plain pickle file (nnU-Net v1 ``.pkl`` plans), safely unless ``trust``; its content checked to be plain
    JSON-shaped data (numpy values turned into Python ones) either way."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: {size / MIB:.0f} MiB, larger than any plans pickle (limit "
                                  f"{MAX_PICKLE_BYTES // MIB} MiB)")
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from e
    try:
        inspect_pickle(data, trust=trust)
    except PickleRefused as e:
        raise _refused(path, e) from e
    try:
        content = pickle.loads(data) if trust else _SafeUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle it ({e}): the safe loader rebuilds only containers "
                              f"and numpy values. {TRUST_HINT}") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable pickle file ({type(e).__name__}: {e})") from e
    return plain_data(content, path, "its content")


def _check_archive(path: Path, size: int, trust: bool) -> None:
    """A torch zip archive: members within the file and not zip bombs, data.pkl allowed, and every tensor storage it
    declares held by a member of exactly that size."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if not infos or "/" not in infos[0].filename:
                raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no <name>/data.pkl)")
            members = {info.filename: info for info in infos}
            for info in infos:
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise CheckpointError(f"{path}: archive member {info.filename} uses compression method "
                                          f"{info.compress_type}; PyTorch writes stored members")
                if info.header_offset + info.compress_size > size:
                    raise CheckpointError(f"{path}: archive member {info.filename} ends past the end of the file "
                                          f"(truncated or damaged)")
            try:
                check_zip_sizes(infos, ARCHIVE_LIMITS)
            except ZipRefused as e:
                raise CheckpointError(f"{path}: {e}; refused") from None
            prefix = infos[0].filename.split("/", 1)[0]
            pkl = members.get(f"{prefix}/data.pkl")
            if pkl is None:
                raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no {prefix}/data.pkl)")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: its data.pkl is {pkl.file_size / MIB:.0f} MiB (limit "
                                      f"{MAX_PICKLE_BYTES // MIB} MiB)")
            data = archive.read(pkl)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: a damaged or truncated zip archive, not a readable checkpoint ({e})") from e

    def storage(key: str, nbytes: int) -> None:
        info = members.get(f"{prefix}/data/{key}")
        if info is None:
            raise PickleRefused(f"declares tensor storage {key!r}, which the archive does not hold")
        if info.file_size != nbytes:
            raise PickleRefused(f"declares {nbytes:,} bytes for tensor storage {key!r}, but the archive holds "
                                f"{info.file_size:,}")

    try:
        inspect_pickle(data, trust=trust, storage_bytes=storage)
    except PickleRefused as e:
        raise _refused(path, e) from e


def _check_legacy(path: Path, size: int, trust: bool) -> None:
    """A legacy torch file: five pickles (magic number, protocol, system info, the object, storage keys) followed by
    the storages' bytes, which must hold what the object declares (torch allocates it before reading)."""
    declared: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            magic = inspect_pickle(f, trust=trust, end=size)
            if constant(magic) != _TORCH_MAGIC:
                raise CheckpointError(f"{path}: a pickle file, not a PyTorch checkpoint (torch.save writes a zip "
                                      f"archive, or a pickle starting with its magic number)")
            inspect_pickle(f, trust=trust, end=size)
            inspect_pickle(f, trust=trust, end=size)
            inspect_pickle(f, trust=trust, end=size, storage_bytes=declared.__setitem__)
            inspect_pickle(f, trust=trust, end=size)
            remaining = size - f.tell()
    except PickleRefused as e:
        raise _refused(path, e) from e
    needed = sum(8 + n for n in declared.values())
    if needed > remaining:
        raise CheckpointError(f"{path}: declares {needed:,} bytes of tensor data but only {remaining:,} follow "
                              f"(truncated or crafted)")


def torch_load(path: Path, trust: bool) -> Any:
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch zip archive, or a legacy pickle
        kind = "a gzip file (a NIfTI image?)" if magic.startswith(b"\x1f\x8b") else f"a file starting with {magic!r}"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint but {kind}; expected an nnU-Net '.model' / '.pth', "
                              f"a torch-saved state_dict or a '.safetensors' file")
    if magic.startswith(b"PK"):
        _check_archive(path, size, trust)
    else:
        _check_legacy(path, size, trust)
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        safe = [(obj, name) for name, obj in _NUMPY_GLOBALS.items()]
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:GLOBAL |but got <class ')([\w.]+)", str(e))
        what = f"it references {found.group(1)}" if found else str(e).splitlines()[0]
        raise CheckpointError(f"{path}: refused to unpickle it ({what}): the safe loader only rebuilds tensors, "
                              f"containers and numpy values, which is all that nnU-Net and stunet checkpoints hold. "
                              f"{TRUST_HINT}") from e
    except Exception as e:  # torch raises many types for files that are not (complete) checkpoints
        detail = str(e).splitlines()[0] if str(e) else "empty, truncated or not a checkpoint"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint that can be read ({type(e).__name__}: {detail})"
                              ) from e
