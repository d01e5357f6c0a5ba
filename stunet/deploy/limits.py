"""The rules a model's description must satisfy to be exported, and a sidecar's to be read: every field that sizes an
allocation or enters the arithmetic is checked before anything is allocated, and a break is one CheckpointError
naming the file, the field and the rule.

- counts: 1 to :data:`MAX_CHANNELS` input channels, 1 to :data:`MAX_CLASSES` output classes, and as many labels
  (regions, for region-based models) as classes;
- ``patch_size``: 2 or 3 whole numbers from 1 to :data:`MAX_PATCH_AXIS`, at most :data:`MAX_PATCH_VOXELS` voxels;
- ``spacing``: one positive finite number (mm) per patch axis;
- ``transpose_forward``: a permutation of the axes, ``transpose_backward`` its inverse;
- ``normalization``: one entry per channel, a scheme name, ``use_mask`` true or false; ``CTNormalization``'s clip
  bounds, mean and std finite, the bounds in order and the std not negative;
- ``sliding_window.mirror_axes``: none, or distinct axes of the patch;
- ``nnunet``: the plans with the configuration (not inheriting from another), whose patch, spacing, transposes,
  normalisation schemes and ``CTNormalization`` numbers are the ones above, and a dataset.json with labels.
"""
from __future__ import annotations

import math
from pathlib import Path

from stunet.errors import CheckpointError

MAX_CHANNELS = 64
MAX_CLASSES = 1000
MAX_PATCH_AXIS = 1024
MAX_PATCH_VOXELS = 512 ** 3


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Rules:
    def __init__(self, where: Path, fix: str):
        self.where, self.fix = where, fix

    def require(self, holds: bool, field: str, value, rule: str) -> None:
        if not holds:
            shown = repr(value)
            raise CheckpointError(f"{self.where}: {field} {shown[:80] + '...' if len(shown) > 80 else shown} must be "
                                  f"{rule}; {self.fix}")

    def permutation(self, value, field: str) -> list[int]:
        self.require(isinstance(value, list) and len(value) in (2, 3) and all(_whole(v) for v in value)
                     and sorted(value) == list(range(len(value))), field, value, "a permutation of the axes")
        return value


def check_model_fields(fields: dict, channels: int, classes: int, where: str | Path, fix: str) -> None:
    """CheckpointError naming ``where``, the field and the rule (then ``fix``) for the first field of ``fields`` (a
    sidecar, or what :func:`stunet.deploy.sidecar.model_fields` makes of a model) that breaks the module's rules."""
    rules = _Rules(Path(where), fix)
    try:
        rules.require(_whole(channels) and 1 <= channels <= MAX_CHANNELS, "the number of input channels", channels,
                      f"from 1 to {MAX_CHANNELS}")
        rules.require(_whole(classes) and 1 <= classes <= MAX_CLASSES, "the number of classes", classes,
                      f"from 1 to {MAX_CLASSES}")
        patch = fields["patch_size"]
        rules.require(isinstance(patch, list) and len(patch) in (2, 3)
                      and all(_whole(p) and 1 <= p <= MAX_PATCH_AXIS for p in patch)
                      and math.prod(patch) <= MAX_PATCH_VOXELS, "patch_size", patch,
                      f"2 or 3 whole numbers from 1 to {MAX_PATCH_AXIS}, at most {MAX_PATCH_VOXELS:,} voxels")
        spacing = fields["spacing"]
        rules.require(isinstance(spacing, list) and len(spacing) == len(patch)
                      and all(_number(s) and s > 0 for s in spacing), "spacing", spacing,
                      f"{len(patch)} positive finite numbers (mm)")
        forward = rules.permutation(fields["transpose_forward"], "transpose_forward")
        backward = rules.permutation(fields["transpose_backward"], "transpose_backward")
        rules.require(len(backward) == len(forward) and [forward[b] for b in backward] == list(range(len(forward))),
                      "transpose_backward", backward, f"the inverse of transpose_forward {forward}")
        entries = fields["normalization"]
        rules.require(isinstance(entries, list) and len(entries) == channels, "normalization", entries,
                      f"one entry per input channel ({channels})")
        for c, entry in enumerate(entries):
            field = f"normalization[{c}]"
            rules.require(isinstance(entry, dict) and isinstance(entry.get("scheme"), str)
                          and isinstance(entry.get("use_mask"), bool), field, entry,
                          "an object with a scheme name and use_mask true or false")
            if entry["scheme"] == "CTNormalization":
                clip = entry.get("clip")
                rules.require(isinstance(clip, list) and len(clip) == 2 and all(_number(v) for v in clip)
                              and clip[0] <= clip[1], f"{field}.clip", clip, "two finite numbers, low to high")
                rules.require(_number(entry.get("mean")), f"{field}.mean", entry.get("mean"), "a finite number")
                rules.require(_number(entry.get("std")) and entry["std"] >= 0, f"{field}.std", entry.get("std"),
                              "a finite number, 0 or more")
        mirror = fields["sliding_window"]["mirror_axes"]
        rules.require(mirror is None or isinstance(mirror, list) and len(set(mirror)) == len(mirror)
                      and all(_whole(a) and 0 <= a < len(patch) for a in mirror), "sliding_window.mirror_axes",
                      mirror, f"none or distinct axes from 0 to {len(patch) - 1}")
        nnunet = fields["nnunet"]
        plans, configuration, dataset_json = nnunet["plans"], nnunet["configuration"], nnunet["dataset_json"]
        rules.require(isinstance(plans, dict) and isinstance(plans.get("configurations"), dict)
                      and isinstance(plans["configurations"].get(configuration), dict)
                      and "inherits_from" not in plans["configurations"][configuration], "nnunet.configuration",
                      configuration, "a configuration of the plans, not inheriting from another")
        cfg = plans["configurations"][configuration]
        for key, value in (("patch_size", patch), ("spacing", spacing)):
            rules.require(cfg.get(key) == value, f"the plans' {key} of {configuration}", cfg.get(key),
                          f"{value} (as above)")
        for key, value in (("transpose_forward", forward), ("transpose_backward", backward)):
            rules.require(plans.get(key) == value, f"the plans' {key}", plans.get(key), f"{value} (as above)")
        schemes = cfg.get("normalization_schemes")
        rules.require(isinstance(schemes, list) and len(schemes) == channels, "the plans' normalization_schemes",
                      schemes, f"one per input channel ({channels})")
        rules.require(isinstance(dataset_json, dict) and isinstance(dataset_json.get("labels"), dict)
                      and isinstance(fields.get("channel_names"), dict), "nnunet.dataset_json", dataset_json,
                      "an object with labels")
        labels = dataset_json["labels"]
        regions = [v for v in labels.values() if not _whole(v)]
        heads = len(regions) if regions else len([k for k, v in labels.items() if k != "ignore"])
        rules.require(heads == classes, "the labels of dataset.json", labels,
                      f"{classes} {'regions' if regions else 'labels'} (one per output class)")
        properties = plans.get("foreground_intensity_properties_per_channel", {})
        for c, (scheme, entry) in enumerate(zip(schemes, entries)):
            rules.require(scheme == entry["scheme"], f"the plans' normalization_schemes[{c}]", scheme,
                          f"{entry['scheme']!r} (as normalization[{c}])")
            if scheme == "CTNormalization":
                numbers = properties[str(c)]
                planned = [numbers["percentile_00_5"], numbers["percentile_99_5"], numbers["mean"], numbers["std"]]
                rules.require(planned == [*entry["clip"], entry["mean"], entry["std"]],
                              f"the plans' intensity properties of channel {c}", planned,
                              f"those of normalization[{c}] (clip, mean, std)")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{where}: a malformed or missing field ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''}); {fix}") from None
