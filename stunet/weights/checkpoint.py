"""Checkpoint files as one object: nnU-Net v1 ``.model`` (+ ``.model.pkl``), nnU-Net v2 ``checkpoint_*.pth``,
bare state_dicts and ``.safetensors``, with DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes removed.

Pickle-based files are unpickled by :mod:`stunet.weights.safe_load`; what is loaded is then type-checked here:
state_dicts map names to tensors, plans and dataset.json are plain data (:mod:`stunet.weights.plain`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path
import re

import numpy as np
import torch

from stunet.errors import CheckpointError
from stunet.labels import is_region_based, label_names_of
from stunet.weights.pickle_guard import MIB
from stunet.weights.plain import MAX_PLAIN_TEXT, plain_data
from stunet.weights.safe_load import read_pickle, torch_load

_PREFIX = re.compile(r"^(?:module\.|_orig_mod\.)+")



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
            if not is_region_based(self.dataset_json):
                return label_names_of(self.dataset_json, f"{self.path}: dataset.json")
        return None


MAX_TENSORS = 100_000


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
                                  ) from e
        return Checkpoint(path, "safetensors", _tensors(state_dict, path, "the file"),
                          metadata=_metadata(metadata, path))

    obj = torch_load(path, trust)
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
