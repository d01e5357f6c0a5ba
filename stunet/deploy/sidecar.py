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
from stunet.errors import CheckpointError
from stunet.version import __version__

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


def build_sidecar(graph: Path, export: dict, network: nn.Module, plans: dict, configuration: str,
                  dataset_json: dict, mirror_axes: Sequence[int] | None, checkpoint: Path | None,
                  checkpoint_sha256: str | None, description: str) -> dict:
    """The sidecar's content for ``graph`` (written by :func:`stunet.deploy.export.export_graph`, whose record is
    ``export``) of ``network`` under ``plans``/``configuration``/``dataset_json``."""
    from stunet.deploy.cache import file_sha256
    from stunet.deploy.export import INPUT_NAME

    patch = list(export["patch_size"])
    plans = copy.deepcopy(plans)
    cfg = plans["configurations"][configuration]
    for name in [n for n in plans["configurations"] if n != configuration]:
        del plans["configurations"][name]  # one configuration: the exported one, with its patch
    cfg.pop("inherits_from", None)
    cfg["patch_size"] = patch
    channels, classes = network.config.in_channels, network.config.num_classes
    labels = dataset_json["labels"]
    regions = {k: v for k, v in labels.items() if not isinstance(v, int)}
    channel_names = {str(k): v for k, v in dataset_json.get("channel_names", dataset_json.get("modality", {})).items()}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "graph": {"file": graph.name, "bytes": graph.stat().st_size, "sha256": file_sha256(graph),
                  "external_data": export.get("external_data"),
                  "input": {"name": INPUT_NAME, "shape": [1, channels, *patch], "dtype": "float32"},
                  "output": {"name": export["output"], "shape": [1, classes, *patch], "dtype": "float32"},
                  "output_kind": ("logits of the regions: sigmoid each, > 0.5 (see regions)" if regions else
                                  "logits of the classes: softmax or argmax over axis 1")},
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
        "labels": {str(v): k for k, v in labels.items() if isinstance(v, int) and k != "ignore"},
        **({"regions": regions, "regions_class_order": dataset_json.get("regions_class_order")} if regions else {}),
        "sliding_window": {"step_size": 0.5, "gaussian_sigma_scale": 0.125, "padding": "constant 0, to the patch",
                           "mirror_axes": list(mirror_axes) if mirror_axes is not None else None},
        "source": {"checkpoint": str(checkpoint) if checkpoint else None, "sha256": checkpoint_sha256,
                   "model": description, "configuration": configuration},
        "exported_with": {"stunet": __version__, "torch": torch.__version__, "onnx": export["onnx"],
                          "opset": export["opset"], "check": export["check"],
                          "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "nnunet": {"plans": plans, "configuration": configuration, "dataset_json": dataset_json},
    }


def write_sidecar(graph: Path, content: dict) -> Path:
    target = sidecar_path(graph)
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(content, indent=2) + "\n"))
    return target


class GraphNetwork(nn.Module):
    """Stands in for the networks of a :class:`stunet.prediction.model.Model` read from an exported ONNX file: the
    engines run the graph, whose output is already the logits, so the "features" the sliding window blends are the
    logits (one channel per class) and the head is the identity."""

    def __init__(self, path: Path, in_channels: int, num_classes: int, spatial_dims: int):
        super().__init__()
        self.path = Path(path)
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


def read_exported(path: str | Path) -> dict:
    """The keyword arguments of :class:`stunet.prediction.model.Model` for an exported ``OUT.onnx`` and its sidecar
    ``OUT.json``: one :class:`GraphNetwork`, the plans, configuration and dataset.json the sidecar holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    side = sidecar_path(path)
    try:
        content = json.loads(side.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no sidecar {side.name} beside it (stunet-export writes both)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{side}: not a readable sidecar ({e})") from e
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{side}: not a stunet-export sidecar (no \"format\": \"{FORMAT}\")")
    if content.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{side}: sidecar format {content['format_version']} is newer than this stunet reads "
                              f"({FORMAT_VERSION}); update stunet")
    graph = content["graph"]
    if graph.get("bytes") is not None and path.stat().st_size != graph["bytes"]:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, but its sidecar {side.name} describes a graph "
                              f"of {graph['bytes']} bytes; export again (the two files belong together)")
    _, channels, *patch = graph["input"]["shape"]
    classes = graph["output"]["shape"][1]
    nnunet = content["nnunet"]
    return {"networks": [GraphNetwork(path, channels, classes, len(patch))], "plans": nnunet["plans"],
            "configuration": nnunet["configuration"], "dataset_json": nnunet["dataset_json"],
            "mirror_axes": tuple(content["sliding_window"]["mirror_axes"])
            if content["sliding_window"].get("mirror_axes") is not None else None,
            "description": f"{path} (ONNX logits graph of {content['source'].get('model')})",
            "checkpoints": [path]}
