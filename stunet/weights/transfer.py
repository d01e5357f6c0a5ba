"""Moving pretrained weights into an STU-Net whose task differs: other classes, other input channels.

- every encoder/decoder tensor is copied; the two architectures must have the same depths, widths and kernel sizes;
- the first layer's input-channel weights are adapted when the channel count differs: each new channel gets the sum
  of the pretrained channels' weights divided by the new count, so an image repeated in every channel produces
  exactly the pretrained activations (the rule timm uses for RGB weights);
- segmentation heads are copied when the classes are the same; otherwise they keep their fresh initialisation,
  except the rows of classes whose names match a pretrained class (label-aware transfer; merged classes average
  their source rows).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch

from stunet.labels import match_labels
from stunet.models.config import CLASSIFIER, FIRST_LAYER
from stunet.models.network import STUNet
from stunet.models.presets import preset_of

_BLOCK = re.compile(r"conv_blocks_context\.(\d+)\.(\d+)\.conv1\.weight")


class IncompatibleWeightsError(ValueError):
    """The pretrained weights cannot go into this network; the message names both architectures."""


@dataclass
class TransferReport:
    transferred: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    head_rows: dict[int, list[int]] = field(default_factory=dict)  # target class -> pretrained classes copied
    unmatched: list[int] = field(default_factory=list)  # target classes whose head rows start fresh

    def summary(self, target_labels: Mapping[int, str] | None = None,
                source_labels: Mapping[int, str] | None = None) -> str:
        lines = [f"pretrained weights: {len(self.transferred)} tensors transferred, {len(self.adapted)} adapted to "
                 f"the input channels, {len(self.reinitialised)} re-initialised"]
        lines += [f"  adapted: {k}" for k in self.adapted]
        lines += [f"  re-initialised: {k}" for k in self.reinitialised]
        targets, sources = target_labels or {}, source_labels or {}
        if self.head_rows:
            lines.append(f"  head rows taken from pretrained classes ({len(self.head_rows)} classes):")
            for target, rows in sorted(self.head_rows.items()):
                lines.append(f"    {targets.get(target, target)} <- " + " + ".join(
                    str(sources.get(s, s)) for s in rows))
        if self.unmatched:
            lines.append(f"  head rows re-initialised, no pretrained class matched ({len(self.unmatched)} classes):")
            lines += [f"    {targets.get(t, t)}" for t in self.unmatched]
            lines.append("  to start them from pretrained classes, give a label map naming their pretrained classes "
                         "(e.g. {\"labels\": {\"1\": {\"name\": \"kidney\", \"from\": [\"kidney_left\", "
                         "\"kidney_right\"]}}}; see docs/finetuning.md)")
        return "\n".join(lines)


def architecture_of(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Depths, widths, channels, classes and kernel sizes of an STU-Net state_dict (strides leave no trace)."""
    blocks: dict[int, int] = {}
    for key in state_dict:
        if m := _BLOCK.fullmatch(key):
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    if not blocks or "seg_outputs.0.weight" not in state_dict:
        raise IncompatibleWeightsError("the weights are not an STU-Net's (no conv_blocks_context.*.conv1 / "
                                       "seg_outputs.* tensors)")
    stages = range(len(blocks))
    missing = [f"conv_blocks_context.{s}.0.conv1.weight" for s in stages
               if f"conv_blocks_context.{s}.0.conv1.weight" not in state_dict]
    if missing:
        raise IncompatibleWeightsError(f"the checkpoint lacks tensor {missing[0]}: it is incomplete or not an STU-Net")
    first = [state_dict[f"conv_blocks_context.{s}.0.conv1.weight"] for s in stages]
    return {"depths": [blocks[s] for s in stages], "widths": [w.shape[0] for w in first],
            "kernel_sizes": [list(w.shape[2:]) for w in first], "in_channels": first[0].shape[1],
            "num_classes": state_dict["seg_outputs.0.weight"].shape[0]}


def describe(arch: Mapping) -> str:
    """'stunet_large' for a preset's depths and widths, else the lists."""
    return preset_of(arch["depths"], arch["widths"]) or (
        f"a custom STU-Net (depths {list(arch['depths'])}, widths {list(arch['widths'])})")


def check_tensors(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], exact: bool = False) -> None:
    """Every tensor of the network is in the checkpoint with its shape (unless ``exact``, heads and first layer may
    differ in classes and input channels); otherwise one line naming the tensor."""
    missing = [k for k in target if k not in source]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise IncompatibleWeightsError(f"the checkpoint lacks tensor {missing[0]}{more}: it is incomplete or not "
                                       f"an STU-Net of this layout")
    unexpected = [k for k in source if k not in target] if exact else []
    if unexpected:
        raise IncompatibleWeightsError(f"the checkpoint has tensor {unexpected[0]} that the network lacks"
                                       + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for key, tensor in target.items():
        got, want = tuple(source[key].shape), tuple(tensor.shape)
        if exact:
            pass
        elif key.startswith(CLASSIFIER):
            got, want = got[1:], want[1:]  # the class count may differ
        elif key in FIRST_LAYER:
            got, want = got[:1] + got[2:], want[:1] + want[2:]  # the input channels may differ
        if got != want:
            raise IncompatibleWeightsError(f"tensor {key} has shape {tuple(source[key].shape)} in the checkpoint but "
                                           f"{tuple(tensor.shape)} in the network")


def architecture_of_network(model: STUNet) -> dict:
    """The architecture of a built STU-Net in :func:`architecture_of`'s terms, from its config (no tensors read)."""
    config = model.config
    return {"depths": list(config.depths), "widths": list(config.widths),
            "kernel_sizes": [list(k) for k in config.kernel_sizes], "in_channels": config.in_channels,
            "num_classes": config.num_classes}


def check_state_dict(state_dict: Mapping[str, torch.Tensor], arch: Mapping) -> None:
    """That an STU-Net state_dict of architecture ``arch`` (:func:`architecture_of`) holds every tensor of that
    architecture with its shape, and no other; an IncompatibleWeightsError names the first tensor that is wrong."""
    ndim = len(arch["kernel_sizes"][0])
    with torch.device("meta"):
        model = STUNet(arch["in_channels"], arch["num_classes"], arch["depths"], arch["widths"],
                       [[1] * ndim] * (len(arch["depths"]) - 1), arch["kernel_sizes"])
    check_tensors(state_dict, model.state_dict(), exact=True)


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-layer weights for ``channels`` inputs: each gets the channel sum divided by ``channels``."""
    summed = weight.sum(dim=1, keepdim=True) / channels
    return summed.expand(-1, channels, *weight.shape[2:]).clone()


def transfer_weights(model: STUNet, source: Mapping[str, torch.Tensor],
                     source_labels: Mapping[int, str] | None = None,
                     target_labels: Mapping[int, str] | None = None,
                     name_map: Mapping[str, list[str]] | None = None,
                     source_arch: Mapping | None = None) -> TransferReport:
    """Copy ``source`` into ``model`` as described in the module docstring; returns what was done. ``source_arch`` is
    ``architecture_of(source)`` where the caller has it already."""
    src_arch = source_arch if source_arch is not None else architecture_of(source)
    dst_arch = architecture_of_network(model)
    for key in ("depths", "widths", "kernel_sizes"):
        if src_arch[key] != dst_arch[key]:
            raise IncompatibleWeightsError(
                f"the pretrained weights are {describe(src_arch)} but the network is {describe(dst_arch)} "
                f"({key} {src_arch[key]} vs {dst_arch[key]}): pick the trainer / model of the checkpoint's size, "
                f"or a checkpoint of the network's size")
    same_classes = src_arch["num_classes"] == dst_arch["num_classes"] and (
        source_labels is None or target_labels is None or
        {k: v for k, v in source_labels.items()} == {k: v for k, v in target_labels.items()})
    rows = {}
    if not same_classes and source_labels and target_labels:
        rows = {t: s for t, s in match_labels(target_labels, source_labels, name_map).items()
                if t < dst_arch["num_classes"] and all(i < src_arch["num_classes"] for i in s)}
    state = model.state_dict()
    check_tensors(source, state)
    report = TransferReport()
    with torch.no_grad():
        for key, tensor in state.items():
            if key.startswith(CLASSIFIER):
                if same_classes:
                    tensor.copy_(source[key])
                    report.transferred.append(key)
                else:
                    for target, sources in rows.items():
                        tensor[target] = torch.stack([source[key][s] for s in sources]).mean(0)
                    report.reinitialised.append(key)
            elif key in FIRST_LAYER and source[key].shape[1] != tensor.shape[1]:
                tensor.copy_(adapt_input_channels(source[key], tensor.shape[1]))
                report.adapted.append(key)
            else:
                tensor.copy_(source[key])
                report.transferred.append(key)
    if not same_classes and source_labels and target_labels:  # label-aware transfer was attempted
        report.unmatched = sorted(t for t in range(dst_arch["num_classes"]) if t not in rows)
    report.head_rows = rows
    return report
