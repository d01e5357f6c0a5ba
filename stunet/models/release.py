"""A released set of weights as plain data: :class:`PretrainedConfig`, one per ``pretrained_configs/*.json``.

A config names the weights (``stunet_large.totalseg104``: registered model ``stunet_large``, tag ``totalseg104``) and
says everything needed to use them apart from the weights themselves: the architecture's arguments, the preprocessing,
the label names, which tensors read the input channels and which are the classifier, the checkpoint's file names and
format, where to get it and its checksum when known. Everything that needs to know about released models (building
them, weight transfer, conversion, prediction) reads these objects; nothing parses model names. The releases are held
by the model registry (:mod:`stunet.models.registry`), under their models.

A value a config cannot state (the strides, preprocessing or label names of a release whose plans were not published)
is written ``"unknown"`` in the JSON and listed in ``config.unknown``; :meth:`PretrainedConfig.completed` fills it from
the nnU-Net v1 plans of the checkpoint's companion ``.model.pkl`` when that is present at load time.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from stunet.errors import CheckpointError
from stunet.models.config import CLASSIFIER, FIRST_LAYER


@dataclass(frozen=True)
class PretrainedConfig:
    """A released set of weights and how to use it."""

    name: str  # "<model>.<tag>"
    model: str  # the registered builder, e.g. "stunet_large"
    description: str
    architecture: dict  # the builder's keyword arguments: in_channels, num_classes, strides, kernel_sizes
    preprocessing: dict  # spacing (axis order of the arrays), normalization, patch_size, axis_order, reader
    labels: dict  # output index -> structure name
    checkpoint_file: str
    checkpoint_format: str  # "nnunet-v1", "nnunet-v2", "state-dict" or "safetensors"
    trainer: str  # the nnU-Net trainer of this size
    companion_file: str | None = None  # nnU-Net v1 .model.pkl
    sha256: str | None = None  # of checkpoint_file, where a citable source states it
    sources: tuple = ()  # where to get the file, in order: {"hub": repo, "file": name} or {"url": link}
    license: str | None = None
    project: str | None = None
    paper: str | None = None
    first_conv: tuple = FIRST_LAYER
    classifier: str = CLASSIFIER
    origin: str = field(default="", compare=False)  # the file it was read from
    #: what the config cannot state, e.g. ("architecture.strides", "preprocessing.spacing", "labels")
    unknown: tuple = ()

    @property
    def tag(self) -> str:
        return self.name[len(self.model) + 1:]

    @property
    def in_channels(self) -> int:
        return int(self.architecture["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.architecture["num_classes"])

    def with_preprocessing(self, **changes) -> "PretrainedConfig":
        """A copy with some preprocessing entries changed (e.g. ``patch_size``)."""
        return replace(self, preprocessing={**self.preprocessing, **changes})

    def missing_for_prediction(self) -> list[str]:
        """The unknown values that building plans for prediction needs (empty when there are none)."""
        return [u for u in self.unknown if u.startswith(("architecture.", "preprocessing.")) and
                u.split(".", 1)[1] in PREDICTION_NEEDS]

    def completed(self, plans: dict | None, where: str = "") -> "PretrainedConfig":
        """This config with its unknown values filled from nnU-Net v1 plans (a ``.model.pkl``'s ``plans``), as the
        STU-Net v1 trainers used them: the last stage's pool kernels (5 strides, padded with [1, 1, 1]), spacing and
        patch size, each channel's normalization, modalities and intensity properties. Known values are kept; class
        and channel counts must agree with the config."""
        if not self.unknown or not plans or "plans_per_stage" not in plans:
            return self
        where = where or "the companion plans"
        try:
            stages = plans["plans_per_stage"]
            stage = stages[max(stages)]
            channels = sorted(int(c) for c in plans["normalization_schemes"])
            if int(plans["num_classes"]) + 1 != self.num_classes or len(channels) != self.in_channels:
                raise CheckpointError(f"{where}: the plans describe {len(channels)} input channel(s) and "
                                      f"{int(plans['num_classes']) + 1} outputs, {self.name} has {self.in_channels} "
                                      f"and {self.num_classes}")
            pools = [[int(s) for s in p] for p in stage["pool_op_kernel_sizes"]][:5]
            pools += [[1] * len(stage["patch_size"])] * (5 - len(pools))
            schemes = [{"CT": "ct", "noNorm": "none"}.get(str(plans["normalization_schemes"][c]), "zscore")
                       for c in channels]
            masks = plans.get("use_mask_for_norm") or {}
            intensities = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
            found = {
                "spacing": [float(s) for s in stage["current_spacing"]],
                "patch_size": [int(s) for s in stage["patch_size"]],
                "normalization": schemes[0] if len(set(schemes)) == 1 else schemes,
                "use_mask_for_norm": [bool(masks.get(c, False)) for c in channels],
                "transpose_forward": [int(a) for a in plans.get("transpose_forward", range(len(stage["patch_size"])))],
                "channel_names": {str(c): str((plans.get("modalities") or {}).get(c, f"channel_{c}"))
                                  for c in channels},
            }
            if "ct" in schemes:
                found["intensity_properties"] = {str(c): {
                    "mean": float(intensities[c]["mean"]), "std": float(intensities[c]["sd"]),
                    "percentile_00_5": float(intensities[c]["percentile_00_5"]),
                    "percentile_99_5": float(intensities[c]["percentile_99_5"])}
                    for c, s in zip(channels, schemes) if s == "ct"}
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{where}: not nnU-Net v1 plans that fill {', '.join(self.unknown)} "
                                  f"({type(e).__name__}: {e})") from e
        architecture, preprocessing = dict(self.architecture), dict(self.preprocessing)
        if "architecture.strides" in self.unknown:
            architecture["strides"] = pools
        if any(u.startswith("preprocessing.") for u in self.unknown):
            for key, value in found.items():
                preprocessing.setdefault(key, value)
        unknown = tuple(u for u in self.unknown if u == "labels")  # v1 plans hold label values, not names
        return replace(self, architecture=architecture, preprocessing=preprocessing, unknown=unknown)

    @classmethod
    def from_dict(cls, data: dict, origin: str = "") -> "PretrainedConfig":
        where = origin or data.get("name", "a pretrained config")
        try:
            checkpoint = data["checkpoint"]
            unknown = []
            architecture, preprocessing = {}, {}
            for section, target in (("architecture", architecture), ("preprocessing", preprocessing)):
                for key, value in dict(data[section]).items():
                    if value == UNKNOWN:
                        unknown.append(f"{section}.{key}")
                    else:
                        target[key] = value
            labels = {int(k): str(v) for k, v in data["labels"].items()}
            if UNKNOWN in labels.values():
                unknown.append("labels")
                labels = {i: f"class_{i}" if n == UNKNOWN else n for i, n in labels.items()}
            config = cls(name=data["name"], model=data["model"], description=data.get("description", ""),
                         architecture=architecture, preprocessing=preprocessing, labels=labels,
                         checkpoint_file=checkpoint["file"], checkpoint_format=checkpoint["format"],
                         trainer=checkpoint["trainer"], companion_file=checkpoint.get("companion"),
                         sha256=checkpoint.get("sha256"), sources=tuple(data.get("sources", ())),
                         license=data.get("license"), project=data.get("project"), paper=data.get("paper"),
                         origin=origin, unknown=tuple(unknown))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: not a pretrained config ({type(e).__name__}: {e}); see "
                             f"pretrained_configs/*.json for the layout") from e
        if not config.name.startswith(config.model + ".") or not config.tag:
            raise ValueError(f"{where}: the name must be '<model>.<tag>', e.g. '{config.model}.mydata', got "
                             f"{config.name!r}")
        if len(config.labels) != config.num_classes:
            raise ValueError(f"{where}: {len(config.labels)} label names for {config.num_classes} classes")
        if config.sha256 is not None and (len(config.sha256) != 64 or
                                          any(c not in "0123456789abcdef" for c in config.sha256.lower())):
            raise ValueError(f"{where}: checkpoint.sha256 must be 64 hexadecimal digits, got {config.sha256!r}")
        for source in config.sources:
            if not isinstance(source, dict) or not (("hub" in source and "file" in source) or "url" in source):
                raise ValueError(f"{where}: each source is {{\"hub\": REPO, \"file\": NAME}} or {{\"url\": LINK}}, "
                                 f"got {source!r}")
        return config


UNKNOWN = "unknown"
#: what plans for prediction need from a config (architecture and preprocessing keys)
PREDICTION_NEEDS = ("strides", "spacing", "patch_size", "normalization")
