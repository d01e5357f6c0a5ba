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
from stunet.network import STUNet

FIRST_LAYER = ("conv_blocks_context.0.0.conv1.weight", "conv_blocks_context.0.0.conv3.weight")
_BLOCK = re.compile(r"conv_blocks_context\.(\d+)\.(\d+)\.conv1\.weight")
PRESETS = {(1, 16): "stunet_small", (1, 32): "stunet_base", (2, 64): "stunet_large", (3, 96): "stunet_huge"}


class IncompatibleWeightsError(ValueError):
    """The pretrained weights cannot go into this network; the message names both architectures."""


@dataclass
class TransferReport:
    transferred: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    head_rows: dict[int, list[int]] = field(default_factory=dict)  # target class -> pretrained classes copied

    def summary(self, target_labels: Mapping[int, str] | None = None,
                source_labels: Mapping[int, str] | None = None) -> str:
        lines = [f"pretrained weights: {len(self.transferred)} tensors transferred, {len(self.adapted)} adapted to "
                 f"the input channels, {len(self.reinitialised)} re-initialised"]
        lines += [f"  adapted: {k}" for k in self.adapted]
        lines += [f"  re-initialised: {k}" for k in self.reinitialised]
        if self.head_rows:
            lines.append(f"  head rows taken from pretrained classes ({len(self.head_rows)} classes):")
            for target, sources in sorted(self.head_rows.items()):
                name = (target_labels or {}).get(target, target)
                lines.append(f"    {name} <- " + " + ".join(str((source_labels or {}).get(s, s)) for s in sources))
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
    first = [state_dict[f"conv_blocks_context.{s}.0.conv1.weight"] for s in stages]
    return {"depths": [blocks[s] for s in stages], "widths": [w.shape[0] for w in first],
            "kernel_sizes": [list(w.shape[2:]) for w in first], "in_channels": first[0].shape[1],
            "num_classes": state_dict["seg_outputs.0.weight"].shape[0]}


def describe(arch: Mapping) -> str:
    """'stunet_large' for a preset's depths and widths, else the lists."""
    depths, widths = list(arch["depths"]), list(arch["widths"])
    base = widths[0]
    preset = PRESETS.get((depths[0], base))
    if preset and depths == [depths[0]] * len(depths) and widths == [base * min(2 ** i, 16) for i in
                                                                      range(len(widths))]:
        return preset
    return f"a custom STU-Net (depths {depths}, widths {widths})"


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-layer weights for ``channels`` inputs: each gets the channel sum divided by ``channels``."""
    summed = weight.sum(dim=1, keepdim=True) / channels
    return summed.expand(-1, channels, *weight.shape[2:]).clone()


def transfer_weights(model: STUNet, source: Mapping[str, torch.Tensor],
                     source_labels: Mapping[int, str] | None = None,
                     target_labels: Mapping[int, str] | None = None,
                     name_map: Mapping[str, list[str]] | None = None) -> TransferReport:
    """Copy ``source`` into ``model`` as described in the module docstring; returns what was done."""
    src_arch, dst_arch = architecture_of(source), architecture_of(model.state_dict())
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
    report = TransferReport()
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            if key.startswith("seg_outputs."):
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
    report.head_rows = rows
    return report
