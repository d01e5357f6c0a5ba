"""The sidecar of an exported graph (``OUT.json`` beside ``OUT.onnx``): what using the graph needs without this
package's model code, and the model folder's own files for ``stunet-predict -m OUT.onnx``.

Keys (docs/deployment.md shows an example):

- ``graph``: the ONNX file, its size and SHA-256, input and output names and shapes (one patch, batch 1), what the
  output is (``logits`` of the full-resolution head, softmax over classes, or sigmoids for region-based models);
- ``patch_size``, ``spacing`` (mm, in the arrays' axis order after ``transpose_forward``), ``transpose_forward`` /
  ``transpose_backward``, ``axis_order`` (how nnU-Net's reader orders a file's axes), ``resampling`` (nnU-Net's
  functions and their arguments);
- ``normalization``: per input channel the scheme and its numbers from the plans (``CTNormalization``: clip bounds,
  mean and std) and the formula;
- ``channel_names``, ``labels`` (output index -> name), ``regions`` (region-based models only);
- ``sliding_window``: nnU-Net's tiling and Gaussian weighting as this package runs it, and the mirroring axes;
- ``source``: the checkpoint, its SHA-256 and the model's description; ``exported_with``: the versions of stunet,
  torch and onnx, the opset, and the check against PyTorch (engine, largest difference, tolerance);
- ``nnunet``: the plans (the exported configuration only, with the exported patch) and dataset.json.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from stunet.atomic import atomic_write
from stunet.deploy.limits import check_model_fields
from stunet.errors import CheckpointError
from stunet.labels import label_names_of
from stunet.version import __version__
from stunet.weights.plain import read_json_file

FORMAT = "stunet-onnx-sidecar"
FORMAT_VERSION = 1

_FORMULAS = {
    "CTNormalization": "x = (clip(x, clip[0], clip[1]) - mean) / max(std, 1e-8)",
    "ZScoreNormalization": "x = (x - x.mean()) / max(x.std(), 1e-8), statistics of this image (with use_mask: of its "
                           "nonzero region only, and 0 outside it)",
    "NoNormalization": "x as read, as float32",
    "RescaleTo01Normalization": "x = (x - x.min()) / max(x.max() - x.min(), 1e-8)",
    "RGBTo01Normalization": "x = x / 255",
}


def sidecar_path(graph: str | Path) -> Path:
    graph = Path(graph)
    return graph.with_name(graph.name[:-len(".onnx")] + ".json" if graph.name.endswith(".onnx") else graph.name
                           + ".json")


def normalization(plans: dict, configuration: str, channel_names: dict) -> list[dict]:
    cfg = plans["configurations"][configuration]
    properties = plans.get("foreground_intensity_properties_per_channel", {})
    entries = []
    for c, scheme in enumerate(cfg["normalization_schemes"]):
        entry = {"channel": c, "name": channel_names.get(str(c), str(c)), "scheme": scheme,
                 "use_mask": bool(cfg.get("use_mask_for_norm", [False] * (c + 1))[c])}
        numbers = properties.get(str(c), {})
        if scheme == "CTNormalization":
            entry.update(clip=[numbers["percentile_00_5"], numbers["percentile_99_5"]], mean=numbers["mean"],
                         std=numbers["std"])
        entry["formula"] = _FORMULAS.get(scheme, f"nnU-Net's {scheme}")
        entries.append(entry)
    return entries


def model_fields(channels: int, classes: int, patch: Sequence[int], plans: dict, configuration: str,
                 dataset_json: dict, mirror_axes: Sequence[int] | None) -> dict:
    """The sidecar's keys that describe the model (all but ``format``, ``graph``, ``source`` and ``exported_with``)
    for a graph of ``patch`` with ``channels`` inputs and ``classes`` outputs."""
    patch = [int(p) for p in patch]
    plans = copy.deepcopy(plans)
    cfg = plans["configurations"][configuration]
    for name in [n for n in plans["configurations"] if n != configuration]:
        del plans["configurations"][name]  # one configuration: the exported one, with its patch
    cfg.pop("inherits_from", None)
    cfg["patch_size"] = patch
    labels = dataset_json["labels"]
    regions = {k: v for k, v in labels.items() if not isinstance(v, int)}
    channel_names = {str(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}
    return {
        "patch_size": patch,
        "spacing": list(cfg["spacing"]),
        "transpose_forward": list(plans["transpose_forward"]),
        "transpose_backward": list(plans["transpose_backward"]),
        "axis_order": "nnU-Net's reader's order (SimpleITK: z, y, x), then permuted by transpose_forward",
        "resampling": {"data": cfg.get("resampling_fn_data"), "data_kwargs": cfg.get("resampling_fn_data_kwargs"),
                       "probabilities": cfg.get("resampling_fn_probabilities"),
                       "probabilities_kwargs": cfg.get("resampling_fn_probabilities_kwargs")},
        "normalization": normalization(plans, configuration, channel_names),
        "channel_names": channel_names,
        "labels": {str(index): name for index, name in label_names_of(dataset_json).items()},
        **({"regions": regions, "regions_class_order": dataset_json.get("regions_class_order")} if regions else {}),
        "sliding_window": {"step_size": 0.5, "gaussian_sigma_scale": 0.125, "padding": "constant 0, to the patch",
                           "mirror_axes": list(mirror_axes) if mirror_axes is not None else None},
        "nnunet": {"plans": plans, "configuration": configuration, "dataset_json": dataset_json},
    }


def build_sidecar(graph: Path, export: dict, network: nn.Module, plans: dict, configuration: str,
                  dataset_json: dict, mirror_axes: Sequence[int] | None, checkpoint: Path | None,
                  checkpoint_sha256: str | None, description: str) -> dict:
    """The sidecar's content for ``graph`` (written by :func:`stunet.deploy.export.export_graph`, whose record is
    ``export``) of ``network`` under ``plans``/``configuration``/``dataset_json``."""
    from stunet.deploy.cache import file_sha256
    from stunet.deploy.export import INPUT_NAME

    channels, classes = network.config.in_channels, network.config.num_classes
    fields = model_fields(channels, classes, export["patch_size"], plans, configuration, dataset_json, mirror_axes)
    patch, external = fields["patch_size"], export.get("external_data")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "graph": {"file": graph.name, "bytes": graph.stat().st_size, "sha256": file_sha256(graph),
                  "external_data": external,
                  "external_data_sha256": file_sha256(graph.parent / external) if external else None,
                  "input": {"name": INPUT_NAME, "shape": [1, channels, *patch], "dtype": "float32"},
                  "output": {"name": export["output"], "shape": [1, classes, *patch], "dtype": "float32"},
                  "output_kind": ("logits of the regions: sigmoid each, > 0.5 (see regions)" if "regions" in fields
                                  else "logits of the classes: softmax or argmax over axis 1")},
        **{k: v for k, v in fields.items() if k != "nnunet"},
        "source": {"checkpoint": str(checkpoint) if checkpoint else None, "sha256": checkpoint_sha256,
                   "model": description, "configuration": configuration},
        "exported_with": {"stunet": __version__, "torch": torch.__version__, "onnx": export["onnx"],
                          "opset": export["opset"], "check": export["check"],
                          "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "nnunet": fields["nnunet"],
    }


def write_sidecar(graph: Path, content: dict) -> Path:
    target = sidecar_path(graph)
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n"))
    return target


class GraphNetwork(nn.Module):
    """Stands in for the networks of a :class:`stunet.prediction.model.Model` read from an exported ONNX file: the
    engines run the graph, whose output is already the logits, so the "features" the sliding window blends are the
    logits (one channel per class) and the head is the identity."""

    def __init__(self, path: Path, in_channels: int, num_classes: int, spatial_dims: int, sha256: str | None = None):
        super().__init__()
        self.path, self.sha256 = Path(path), sha256
        self.config = _GraphConfig(in_channels, num_classes, (num_classes,), spatial_dims)
        conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(num_classes, num_classes, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(num_classes).reshape(conv.weight.shape))
            conv.bias.zero_()
        conv.requires_grad_(False)
        self.seg_outputs = nn.ModuleList([conv])
        self.deep_supervision = False

    def decode(self, x, all_stages=False):
        raise ValueError(f"{self.path.name} is an exported ONNX graph: run it with an engine (backend onnxruntime or "
                         f"openvino), not torch")

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return features


class _GraphConfig:
    def __init__(self, in_channels: int, num_classes: int, widths: tuple, spatial_dims: int):
        self.in_channels, self.num_classes, self.widths, self.spatial_dims = in_channels, num_classes, widths, \
            spatial_dims


def _check_graph(graph, side: Path, patch) -> tuple[int, int]:
    """(channels, classes) of the sidecar's ``graph`` record, or CheckpointError naming the sidecar."""
    def require(holds: bool, rule: str) -> None:
        if not holds:
            raise CheckpointError(f"{side}: graph {rule}; export again")

    require(isinstance(graph, dict), "must be an object")
    shapes = [graph.get(k, {}).get("shape") if isinstance(graph.get(k), dict) else None for k in ("input", "output")]
    for shape in shapes:
        require(isinstance(shape, list) and len(shape) == 2 + len(patch) and shape[0] == 1 and shape[2:] == patch
                and all(isinstance(n, int) and not isinstance(n, bool) for n in shape),
                f"shapes {shapes} must be [1, channels, *patch_size] and [1, classes, *patch_size]")
    require(isinstance(graph.get("bytes"), int) and graph["bytes"] >= 0, "bytes must be the graph's size")
    for key in ("sha256",) + (("external_data_sha256",) if graph.get("external_data") is not None else ()):
        require(isinstance(graph.get(key), str) and len(graph[key]) == 64
                and all(c in "0123456789abcdef" for c in graph[key]), f"{key} must be 64 hexadecimal digits")
    external = graph.get("external_data")
    require(external is None or isinstance(external, str) and external == Path(external).name
            and external not in ("", ".", ".."), "external_data must be a file name beside the graph")
    return shapes[0][1], shapes[1][1]


def read_exported(path: str | Path) -> dict:
    """The keyword arguments of :class:`stunet.prediction.model.Model` for an exported ``OUT.onnx`` and its sidecar
    ``OUT.json``: one :class:`GraphNetwork`, the plans, configuration and dataset.json the sidecar holds.

    The sidecar is read only from a regular file of bounded size; every field it documents is checked
    (:mod:`stunet.deploy.limits`) before anything is allocated, then the graph's size and SHA-256 (and those of its
    external weights) against the sidecar's: CheckpointError naming the file and the rule otherwise."""
    from stunet.deploy.cache import file_sha256

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        raise FileNotFoundError(f"{path}: no sidecar {side.name} beside it (stunet-export writes both)")
    content = read_json_file(side, "the sidecar")
    if content.get("format") != FORMAT:
        raise CheckpointError(f"{side}: not a stunet-export sidecar (no \"format\": \"{FORMAT}\")")
    version = content.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{side}: sidecar format {version!r} is not one this stunet reads (1 to "
                              f"{FORMAT_VERSION}); export again, or update stunet")
    patch = content.get("patch_size")
    graph = content.get("graph")
    channels, classes = _check_graph(graph, side, patch if isinstance(patch, list) else [])
    check_model_fields(content, channels, classes, side, "export again")
    if path.stat().st_size != graph["bytes"]:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, but its sidecar {side.name} describes a graph "
                              f"of {graph['bytes']} bytes; export again (the two files belong together)")
    if file_sha256(path) != graph["sha256"]:
        raise CheckpointError(f"{path}: its SHA-256 differs from the one its sidecar {side.name} records; the graph "
                              f"was changed after export: export again")
    if graph.get("external_data") is not None:
        data = path.parent / graph["external_data"]
        if not data.is_file() or file_sha256(data) != graph["external_data_sha256"]:
            raise CheckpointError(f"{data}: missing, or its SHA-256 differs from the one the sidecar {side.name} "
                                  f"records; export again")
    nnunet = content["nnunet"]
    mirror = content["sliding_window"]["mirror_axes"]
    return {"networks": [GraphNetwork(path, channels, classes, len(patch), graph["sha256"])],
            "plans": nnunet["plans"], "configuration": nnunet["configuration"],
            "dataset_json": nnunet["dataset_json"], "mirror_axes": tuple(mirror) if mirror is not None else None,
            "description": f"{path} (ONNX logits graph of {str((content.get('source') or {}).get('model'))[:200]})",
            "checkpoints": [path]}
