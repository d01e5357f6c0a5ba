"""Reading and writing checkpoints: nnU-Net v1 ``.model`` (+ ``.model.pkl``), nnU-Net v2 ``checkpoint_*.pth``, bare
state_dicts and ``.safetensors``, with DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes removed.

Pickle-based files are read safely by default: only tensors, plain containers and numpy scalars/arrays (what the known
formats hold) are rebuilt, so a crafted file cannot run code. ``trust=True`` unpickles with full trust, for files whose
origin you trust that hold other objects.
"""
from __future__ import annotations

import codecs
import collections
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


def read_pickle(path: str | Path, trust: bool = False) -> Any:
    """A plain pickle file (nnU-Net v1 ``.pkl`` plans), safely unless ``trust``."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return pickle.load(f) if trust else _SafeUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refused to unpickle it ({e}): the safe loader rebuilds only containers "
                                  f"and numpy values. {TRUST_HINT}") from None
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable pickle file ({type(e).__name__}: {e})") from None


def _torch_load(path: Path, trust: bool) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch zip archive, or a legacy pickle
        kind = "a gzip file (a NIfTI image?)" if magic.startswith(b"\x1f\x8b") else f"a file starting with {magic!r}"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint but {kind}; expected an nnU-Net '.model' / '.pth', "
                              f"a torch-saved state_dict or a '.safetensors' file")
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


def strip_wrapper_prefix(key: str) -> str:
    """A parameter name without the DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes."""
    return _PREFIX.sub("", key)


def clean_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    return {strip_wrapper_prefix(k): v for k, v in state_dict.items()}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_checkpoint(path: str | Path, trust: bool = False) -> Checkpoint:
    """Read any supported checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                state_dict = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        return Checkpoint(path, "safetensors", clean_state_dict(state_dict), metadata=metadata)

    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and "network_weights" in obj:
        init = obj.get("init_args") or {}
        return Checkpoint(path, "nnunet-v2", clean_state_dict(obj["network_weights"]),
                          trainer_name=obj.get("trainer_name"), plans=init.get("plans"),
                          configuration=init.get("configuration"), dataset_json=init.get("dataset_json"),
                          mirroring_axes=obj.get("inference_allowed_mirroring_axes"))
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        companion = path.with_name(path.name + ".pkl")
        info = read_pickle(companion, trust) if companion.is_file() else {}
        return Checkpoint(path, "nnunet-v1", clean_state_dict(obj["state_dict"]), trainer_name=info.get("name"),
                          plans=info.get("plans"))
    if _is_state_dict(obj):
        return Checkpoint(path, "state-dict", clean_state_dict(obj))
    keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: not a known checkpoint layout (found {keys}); expected an nnU-Net v1 '.model' "
                          f"(with 'state_dict'), an nnU-Net v2 'checkpoint_*.pth' (with 'network_weights'), a bare "
                          f"state_dict or a '.safetensors' file")
