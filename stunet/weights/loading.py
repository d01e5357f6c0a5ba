"""Weights into a network: the one route from a checkpoint file to a network with its weights, taken by
``create_model(..., pretrained=...)``, prediction (:mod:`stunet.prediction.model`), the trainers'
``-pretrained_weights`` and ``stunet-convert``.

:func:`read_weights` reads the file once (:func:`~stunet.weights.checkpoint.load_checkpoint`) and infers the
architecture of its state dict once (:func:`~stunet.weights.transfer.architecture_of`). The :class:`Weights` it returns
answers the rest from that: which released model the weights are, the class names of their outputs and their test-time
mirroring axes. :func:`load_pretrained` puts them into a built network, adapting the first layer and the heads where
the input channels or classes differ (:func:`~stunet.weights.transfer.transfer_weights`), or strictly (``exact``),
and returns a :class:`LoadReport`.

Test-time mirroring axes: an nnU-Net v2 checkpoint's ``inference_allowed_mirroring_axes`` (none when it names none,
as for nnU-Net). The other formats state none: the released nnU-Net v1 ``.model`` files, bare state dicts and
safetensors get every spatial axis, as the released models' training mirrored along all three. A released model loaded
by name and the same file converted to an nnU-Net model folder therefore predict with the same axes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping

from stunet.errors import CheckpointError
from stunet.models.network import STUNet
from stunet.models.registry import list_models
from stunet.weights.checkpoint import Checkpoint, load_checkpoint
from stunet.weights.pretrained import PretrainedConfig, configs_matching, get_pretrained_config
from stunet.weights.transfer import (IncompatibleWeightsError, TransferReport, architecture_of, check_state_dict,
                                     check_tensors, transfer_weights)


@dataclass
class Weights:
    """A checkpoint read once, with the architecture of its state dict."""

    checkpoint: Checkpoint
    architecture: dict

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> "Weights":
        """A checkpoint already read, with its architecture inferred (a CheckpointError naming the file when the
        state dict is no STU-Net's)."""
        try:
            return cls(checkpoint, architecture_of(checkpoint.state_dict))
        except IncompatibleWeightsError as e:
            raise CheckpointError(f"{checkpoint.path}: {e}") from None

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def state_dict(self) -> dict:
        return self.checkpoint.state_dict

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """The test-time mirroring axes (see the module docstring)."""
        if self.checkpoint.format == "nnunet-v2":
            return self.checkpoint.mirroring_axes
        return tuple(range(len(self.architecture["kernel_sizes"][0])))

    def releases(self) -> list[PretrainedConfig]:
        """The released models of this architecture."""
        return configs_matching(self.architecture)

    def release(self, name: str | None = None) -> PretrainedConfig | None:
        """The released model these weights are: the one called ``name`` (for a registered model with several
        releases, the one of this architecture), else the only release of this architecture (None when there is
        none; a ValueError listing them when there are several)."""
        if name:
            try:
                return get_pretrained_config(name)
            except ValueError:
                fitting = [c for c in self.releases() if c.model == name]
                if name not in list_models() or len(fitting) != 1:
                    raise
                return fitting[0]
        matches = self.releases()
        if len(matches) > 1:
            raise ValueError(f"{self.path}: the weights fit {len(matches)} released models "
                             f"({', '.join(c.name for c in matches)}); name one with --pretrained")
        return matches[0] if matches else None

    def labels(self, release: PretrainedConfig | None = None) -> dict[int, str] | None:
        """The class names of the outputs: the file's, else the release's (of the same class count), else those the
        released models of this architecture agree on (None when nothing says)."""
        if self.checkpoint.label_names:
            return self.checkpoint.label_names
        if release is not None and release.num_classes == self.architecture["num_classes"]:
            return dict(release.labels)
        label_sets = {tuple(sorted(c.labels.items())) for c in self.releases()}
        return dict(label_sets.pop()) if len(label_sets) == 1 else None

    def check_counts(self, release: PretrainedConfig) -> None:
        """The release as it is (no class or channel override): the file must have its outputs and input channels,
        or the heads would start fresh unnoticed."""
        arch = self.architecture
        if (arch["num_classes"], arch["in_channels"]) != (release.num_classes, release.in_channels):
            raise CheckpointError(f"{self.path}: the checkpoint has {arch['num_classes']} outputs and "
                                  f"{arch['in_channels']} input channel(s), {release.name} has {release.num_classes} "
                                  f"and {release.in_channels}; another release? To start from it anyway, pass "
                                  f"num_classes= and in_channels=")

    def check_complete(self) -> None:
        """Every tensor of the architecture with its shape, and no other (a CheckpointError naming the first)."""
        try:
            check_state_dict(self.state_dict, self.architecture)
        except IncompatibleWeightsError as e:
            raise CheckpointError(f"{self.path}: {e}") from None


def read_weights(file: str | Path, *, trust: bool = False) -> Weights:
    """Read a checkpoint file of any supported format (``trust``: unpickle with full trust) and infer its
    architecture."""
    return Weights.of(load_checkpoint(file, trust=trust))


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: the file and its format, its architecture, the release it is (None when
    unknown), the tensors transferred, adapted or re-initialised, the checkpoint's test-time mirroring axes and the
    class names of its outputs."""

    path: Path
    format: str
    architecture: dict
    release: PretrainedConfig | None
    transfer: TransferReport
    mirror_axes: tuple[int, ...] | None
    labels: dict[int, str] | None

    @cached_property
    def sha256(self) -> str:
        """The SHA-256 of the file (hashed when first asked for)."""
        from stunet.weights.hub import sha256_of
        return sha256_of(self.path, progress=False)

    def summary(self, target_labels: Mapping[int, str] | None = None) -> str:
        return self.transfer.summary(target_labels, self.labels)


def load_pretrained(model: STUNet, release: PretrainedConfig | None, file: str | Path | bool | Weights, *,
                    trust: bool = False, target_labels: Mapping[int, str] | None = None,
                    name_map: Mapping[str, list[str]] | None = None, exact: bool = False,
                    network: str = "") -> LoadReport:
    """Put a checkpoint's weights into ``model`` and report what was done.

    ``file``: a checkpoint file, :class:`Weights` already read, or True for ``release``'s file from the cache
    (downloaded on first use, :func:`stunet.weights.hub.weights_path`). Where the model's input channels or classes
    differ from the file's, the first layer is adapted and the heads start fresh except the rows of classes whose
    names match (``target_labels``, ``name_map``); every other tensor must be there with its shape. ``exact``: no
    adaptation and no tensor beyond the model's. ``network`` describes the model in error messages.
    """
    if file is True:
        if release is None:
            raise ValueError("load_pretrained(model, None, True): the cached file is a release's; give the release "
                             "or the checkpoint file")
        from stunet.weights.hub import weights_path
        file = weights_path(release)
    weights = file if isinstance(file, Weights) else read_weights(file, trust=trust)
    labels = weights.labels(release)
    try:
        if exact:
            check_tensors(weights.state_dict, model.state_dict(), exact=True)
            model.load_state_dict(weights.state_dict, strict=True)
            transfer = TransferReport(transferred=list(weights.state_dict))
        else:
            transfer = transfer_weights(model, weights.state_dict, labels, target_labels, name_map,
                                        source_arch=weights.architecture)
    except IncompatibleWeightsError as e:
        raise CheckpointError(f"{weights.path}: {e}" + (f" ({network})" if network else "")) from None
    return LoadReport(weights.path, weights.checkpoint.format, weights.architecture, release, transfer,
                      weights.mirror_axes, labels)


def create_pretrained(name: str, file: str | Path | bool, *, trust: bool = False, **overrides) -> STUNet:
    """``create_model(name, pretrained=file, **overrides)``: the release's architecture (unless overridden) with the
    checkpoint's weights. ``name`` is a release ('stunet_large.totalseg104') or a registered model (the release then
    follows from the file's architecture, or is the model's only one); ``file`` True takes the release's file from the
    cache. Values the config does not know are filled from the checkpoint's companion plans. The model carries the
    release as ``model.pretrained_config`` and the :class:`LoadReport` as ``model.load_report``."""
    from stunet.models.registry import model_builder

    release = None
    if file is True:
        from stunet.weights.hub import weights_path
        release = get_pretrained_config(name)
        file = weights_path(release)
    weights = read_weights(file, trust=trust)
    release = (release or weights.release(name)).completed(weights.checkpoint.plans, f"{weights.path}.pkl")
    if "num_classes" not in overrides and "in_channels" not in overrides:
        weights.check_counts(release)
    if "architecture.strides" in release.unknown and "strides" not in overrides:
        warnings.warn(f"{release.name}: the strides are not known without the companion {release.companion_file} "
                      f"beside {weights.path}; built with the default strides (the weights do not depend on them, "
                      f"the predictions do)", stacklevel=3)
    model = model_builder(release.model)(**{**release.architecture, **overrides})
    model.load_report = load_pretrained(model, release, weights)
    model.transfer_report = model.load_report.transfer
    model.pretrained_config = release
    return model
