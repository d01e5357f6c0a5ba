"""Reading and writing checkpoints: nnU-Net v1 ``.model`` (+ ``.model.pkl``), nnU-Net v2 ``checkpoint_*.pth``, bare
state_dicts and ``.safetensors``, with DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes removed.

Pickle-based files are read safely by default: only tensors, plain containers and numpy scalars/arrays (what the known
formats hold) are rebuilt, so a crafted file cannot run code. Before anything is unpickled, stunet.pickle_guard walks
the pickle's opcodes and refuses globals outside the allowlist, arguments outside what real files hold (object dtypes,
other codecs, arrays larger than their bytes) and anything over its size limits (reference bombs, huge memos); torch
archives are checked first (every declared tensor storage against the bytes the archive really holds, no zip bombs).
What is loaded is then type-checked: state_dicts map names to tensors, plans and dataset.json are plain JSON-shaped
data of bounded size (copied, so shared references cannot explode in a later walk or JSON writer).

``trust=True`` unpickles with full trust, for files whose origin you trust that hold other objects; the size limits and
the structure checks still apply.
"""
from __future__ import annotations

import codecs
import collections
import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stunet.pickle_guard import PickleRefused, constant, inspect_pickle

_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or is refused; the message names the file and what to do."""


@dataclass
class Checkpoint:
    path: Path
    format: str  # "nnunet-v1", "nnunet-v2", "state-dict" or "safetensors"
    state_dict: dict[str, torch.Tensor]
    trainer_name: str | None = None
    plans: dict | None = None  # nnU-Net v1 plans (from the .model.pkl) or v2 plans
    configuration: str | None = None  # nnU-Net v2 configuration name
    dataset_json: dict | None = None  # nnU-Net v2
    mirroring_axes: tuple | None = None
    metadata: dict = field(default_factory=dict)  # safetensors metadata (our config, label names)

    @property
    def label_names(self) -> dict[int, str] | None:
        """Output index -> name, where the file says (nnU-Net v2 dataset.json labels, our safetensors metadata)."""
        if "labels" in self.metadata:
            return {int(k): v for k, v in json.loads(self.metadata["labels"]).items()}
        if self.dataset_json and "labels" in self.dataset_json:
            labels = self.dataset_json["labels"]
            if all(isinstance(v, int) for v in labels.values()):
                return {v: k for k, v in labels.items()}
        return None


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[f"{module}.{name}"]
        except KeyError:
            raise pickle.UnpicklingError(f"unsupported global {module}.{name}") from None


# -- bounds -------------------------------------------------------------------------------------------------------
MIB = 1 << 20
MAX_PICKLE_BYTES = 256 * MIB  # a .pkl file, or the data.pkl of a torch archive (real: under 1 MiB)
MAX_ARCHIVE_BYTES = 64 << 30  # all members of a torch archive, uncompressed (the largest release: 1.6 GB)
MAX_COMPRESSION_RATIO = 100  # deflated archive members (torch writes them stored; deflate reaches 1000x on zeros)
MAX_TENSORS = 100_000
MAX_PLAIN_NODES = 100_000  # values in plans / dataset.json / metadata, shared references counted each time
MAX_PLAIN_TEXT = 64 * MIB
MAX_PLAIN_DEPTH = 64
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
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        inspect_pickle(data, trust=trust)
    except PickleRefused as e:
        raise _refused(path, e) from None
    try:
        content = pickle.loads(data) if trust else _SafeUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle it ({e}): the safe loader rebuilds only containers "
                              f"and numpy values. {TRUST_HINT}") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable pickle file ({type(e).__name__}: {e})") from None
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
            total = 0
            for info in infos:
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise CheckpointError(f"{path}: archive member {info.filename} uses compression method "
                                          f"{info.compress_type}; PyTorch writes stored members")
                if info.header_offset + info.compress_size > size:
                    raise CheckpointError(f"{path}: archive member {info.filename} ends past the end of the file "
                                          f"(truncated or damaged)")
                if info.compress_type == zipfile.ZIP_DEFLATED and \
                        info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + MIB:
                    raise CheckpointError(f"{path}: archive member {info.filename} expands {info.compress_size:,} "
                                          f"bytes into {info.file_size:,} (a zip bomb?); refused")
                total += info.file_size
            if total > MAX_ARCHIVE_BYTES:
                raise CheckpointError(f"{path}: the archive expands to {total / (1 << 30):.1f} GiB, over the "
                                      f"{MAX_ARCHIVE_BYTES >> 30} GiB limit")
            prefix = infos[0].filename.split("/", 1)[0]
            pkl = members.get(f"{prefix}/data.pkl")
            if pkl is None:
                raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no {prefix}/data.pkl)")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: its data.pkl is {pkl.file_size / MIB:.0f} MiB (limit "
                                      f"{MAX_PICKLE_BYTES // MIB} MiB)")
            data = archive.read(pkl)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: a damaged or truncated zip archive, not a readable checkpoint ({e})") from None

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
        raise _refused(path, e) from None


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
        raise _refused(path, e) from None
    needed = sum(8 + n for n in declared.values())
    if needed > remaining:
        raise CheckpointError(f"{path}: declares {needed:,} bytes of tensor data but only {remaining:,} follow "
                              f"(truncated or crafted)")


def _torch_load(path: Path, trust: bool) -> Any:
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
                              f"{TRUST_HINT}") from None
    except Exception as e:  # torch raises many types for files that are not (complete) checkpoints
        detail = str(e).splitlines()[0] if str(e) else "empty, truncated or not a checkpoint"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint that can be read ({type(e).__name__}: {detail})"
                              ) from None


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
                              f"{''.join(reversed(keys)) or 'the top'}; a damaged or crafted file") from None

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
    """A JSON object from ``path`` (a model folder's plans.json / dataset.json), checked like the plans inside a
    checkpoint: plain, bounded data; CheckpointError naming the file otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PLAIN_TEXT:
            raise CheckpointError(f"{path}: larger than {MAX_PLAIN_TEXT // MIB} MiB; not an nnU-Net JSON file")
        content = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({str(e).splitlines()[0][:160] or type(e).__name__})"
                              ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    content = plain_data(content, path, what)
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content


def _text(obj, path: Path, what: str, limit: int = 1000) -> str | None:
    if obj is None or (isinstance(obj, str) and len(obj) <= limit):
        return obj
    raise CheckpointError(f"{path}: {what} is {type(obj).__name__}"
                          + (f" of {len(obj):,} characters" if isinstance(obj, str) else "")
                          + ", not a short text; a damaged or crafted file")


def _tensors(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``obj`` checked to be a non-empty, bounded mapping of names to tensors whose sizes their storages cover."""
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: {what} is {'empty' if isinstance(obj, dict) else type(obj).__name__}, not "
                              f"a state_dict of named tensors")
    if len(obj) > MAX_TENSORS:
        raise CheckpointError(f"{path}: {what} holds {len(obj):,} entries (limit {MAX_TENSORS:,})")
    stored, logical = {}, 0
    for key, value in obj.items():
        if not isinstance(key, str) or len(key) > 1000:
            raise CheckpointError(f"{path}: {what} has a key {str(key)[:60]!r} of type {type(key).__name__}; "
                                  f"parameter names are short strings (a damaged or crafted file)")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {what}[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized:
            raise CheckpointError(f"{path}: {what}[{key!r}] is a {value.layout} tensor; expected a dense one")
        storage = value.untyped_storage()
        stored[storage.data_ptr(), storage.nbytes()] = storage.nbytes()
        logical += value.numel() * value.element_size()
    if logical > 2 * sum(stored.values()) + MIB:
        raise CheckpointError(f"{path}: {what}'s tensors view {logical:,} bytes of {sum(stored.values()):,} stored "
                              f"(overlapping views); a crafted file")
    return clean_state_dict(obj)


def _mirroring(obj, path: Path) -> tuple | None:
    if obj is None:
        return None
    if isinstance(obj, (list, tuple)) and len(obj) <= 3 and all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) and 0 <= a < 3 for a in obj):
        return tuple(int(a) for a in obj)
    raise CheckpointError(f"{path}: inference_allowed_mirroring_axes is {str(obj)[:60]!r}, not up to three axes "
                          f"0-2")


def _metadata(metadata: dict, path: Path) -> dict:
    if sum(len(k) + len(v) for k, v in metadata.items()) > MAX_PLAIN_TEXT:
        raise CheckpointError(f"{path}: its metadata exceeds {MAX_PLAIN_TEXT // MIB} MiB")
    if "labels" in metadata:
        try:
            labels = json.loads(metadata["labels"])
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise ValueError("not a mapping of index to name")
            {int(k): v for k, v in labels.items()}
        except (ValueError, RecursionError, TypeError) as e:
            raise CheckpointError(f"{path}: its metadata 'labels' is not a JSON object of index -> name ({e})"
                                  ) from None
    return metadata


def strip_wrapper_prefix(key: str) -> str:
    """A parameter name without the DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    return _PREFIX.sub("", key)


def clean_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    return {strip_wrapper_prefix(k): v for k, v in state_dict.items()}


def load_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read any supported checkpoint file; raise CheckpointError (one line naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                if len(f.keys()) > MAX_TENSORS:
                    raise CheckpointError(f"{path}: holds {len(f.keys()):,} tensors (limit {MAX_TENSORS:,})")
                state_dict = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:200]})"
                                  ) from None
        return Checkpoint(path, "safetensors", _tensors(state_dict, path, "the file"),
                          metadata=_metadata(metadata, path))

    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and "network_weights" in obj:
        init = obj.get("init_args")
        if init is not None and not isinstance(init, dict):
            raise CheckpointError(f"{path}: init_args is a {type(init).__name__}, not a dict")
        init = init or {}
        plans = plain_data(init.get("plans"), path, "init_args['plans']")
        dataset_json = plain_data(init.get("dataset_json"), path, "init_args['dataset_json']")
        for name, value in (("plans", plans), ("dataset_json", dataset_json)):
            if value is not None and not isinstance(value, dict):
                raise CheckpointError(f"{path}: init_args['{name}'] is a {type(value).__name__}, not a dict")
        return Checkpoint(path, "nnunet-v2", _tensors(obj["network_weights"], path, "network_weights"),
                          trainer_name=_text(obj.get("trainer_name"), path, "trainer_name"), plans=plans,
                          configuration=_text(init.get("configuration"), path, "init_args['configuration']"),
                          dataset_json=dataset_json,
                          mirroring_axes=_mirroring(obj.get("inference_allowed_mirroring_axes"), path))
    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict = _tensors(obj["state_dict"], path, "state_dict")
        companion = path.with_name(path.name + ".pkl")
        info = read_pickle(companion, trust) if companion.is_file() else {}
        if not isinstance(info, dict):
            raise CheckpointError(f"{companion}: holds a {type(info).__name__}, not nnU-Net's dict of trainer "
                                  f"name and plans")
        plans = info.get("plans")
        if plans is not None and not isinstance(plans, dict):
            raise CheckpointError(f"{companion}: its 'plans' is a {type(plans).__name__}, not a dict")
        return Checkpoint(path, "nnunet-v1", state_dict, trainer_name=_text(info.get("name"), companion, "name"),
                          plans=plans)
    if isinstance(obj, dict) and obj and any(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(path, "state-dict", _tensors(obj, path, "the state_dict"))
    keys = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: not a known checkpoint layout (found {keys}); expected an nnU-Net v1 '.model' "
                          f"(with 'state_dict'), an nnU-Net v2 'checkpoint_*.pth' (with 'network_weights'), a bare "
                          f"state_dict or a '.safetensors' file")
