"""Sliding-window segmentation with STU-Nets, on nnU-Net's preprocessing and geometry, in bounded memory.

Same result as nnU-Net's predictor, computed in another order. nnU-Net blends the *logits* of every tile (one channel
per class) with a Gaussian over the whole image, resamples all class channels to the original grid and takes the
argmax. The segmentation head (a 1×1 convolution) and linear resampling are both linear, so blending and resampling
the *features* that feed the head, and applying the head afterwards, gives the same logits:

    blend(head(f_i)) = head(blend(f_i)),    resample(head(f)) = head(resample(f))

The features have 16 (S) to 96 (H) channels whatever the number of classes. Tiles run row-major along the first
axis, so the canvas holds only the rows one tile spans, and finished rows go to the export as they come
(:meth:`Predictor.feature_slabs`); the export takes the argmax on the network's grid and computes interpolated logits
only where that is undecided (:mod:`stunet.prediction.export`). Memory therefore grows with the image and the network, not with
classes × voxels.

In a CT, tiles holding no body are not run (:mod:`stunet.prediction.body`): the network's features of one all-air
tile, computed once, are blended in their place, so the result differs from running them only by the air's own noise.

Reused from nnU-Net: image reading and writing (the plans' reader), the preprocessing steps and normalisation classes
(:mod:`stunet.prediction.preprocessing`), tile positions, the Gaussian, padding, mirroring axes, the label manager, the
resampling rules.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
import time
from typing import Callable, Iterator, Sequence

from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
import numpy as np
import torch

from stunet.cpu_memory import release_freed_memory
from stunet.models.network import STUNet
from stunet.prediction.body import air_rule, air_value, body_mask, tiles_to_run
from stunet.prediction.export import ConfidenceTally, argmax, fine_labels, head_logits
from stunet.prediction.model import Model
from stunet.prediction.preprocessing import preprocess
from stunet.prediction.resample import axis_orders, resample_chunks, resampled_spacing

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# The largest relative difference (L2 norm) between a tile's features at a reduced precision on the CPU and in fp32
# that is taken as rounding; bf16's own is about 0.01 through a whole STU-Net. oneDNN's bfloat16 convolutions give
# wrong values on some CPUs for some small layer shapes (seen on a 2-core Xeon with AMX: a 1x2x2 input, stride 2 on
# the last axis, 256+ channels), so the first tile is checked against fp32.
LOW_PRECISION_TOLERANCE = 0.05


class Predictor:
    """Segments images with a :class:`Model`."""

    def __init__(self, model: Model, device: str | torch.device = "cpu", step_size: float = 0.5,
                 mirroring: bool = True, precision: str = "auto", chunk_slices: int = 8, backend: str = "torch",
                 skip_air: bool = True):
        self.model = model
        self.device = torch.device(device)
        self.step_size = step_size
        self.mirror_axes = model.mirror_axes if mirroring else None
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = PRECISIONS[precision]
        # what computes each network's features: the networks, or (backend onnxruntime/openvino) an engine of
        # stunet.deploy per network, which has the network's decode() and so runs inside _features' mirroring
        self.backend, self.runners = backend, model.networks
        if backend != "torch":
            from stunet.deploy.runners import feature_engines
            self.runners = feature_engines(model, backend, precision, self.device)
            self.autocast_dtype = None  # the engine's own precision
        self.precision = self.runners[0].precision if backend != "torch" else precision
        self.chunk_slices = chunk_slices
        self.network_seconds = 0.0  # the forward passes of the last image (feature_slabs)
        self.tiles = 0  # tiles of the last image
        # tiles the body misses get the features of an all-air tile (stunet.prediction.body; CT models only)
        self.air_rule = air_rule(model) if skip_air else None
        self.air_threshold = self.air_rule.normalised if self.air_rule else None  # set per image by preprocess
        self.skipped_tiles = 0  # of the last image
        self._air: tuple[float, list[torch.Tensor]] | None = None  # (air value, features of each network)
        self.tally: ConfidenceTally | None = None  # set by the caller to collect winning probabilities (--qc)
        self.fallbacks: list[str] = []  # where the last image's work left the GPU for the CPU (out of memory)
        self._precision_checked = self.device.type != "cpu" or self.autocast_dtype is None
        for network in model.networks:
            network.to(self.device)

    def note_fallback(self, what: str) -> None:
        self.fallbacks.append(f"{what} did not fit in the memory of {self.device}; it was computed on the CPU (slower, "
                              f"same result)")

    def take_fallbacks(self) -> list[str]:
        """The fallbacks of the last image, once (the next image starts with none)."""
        taken, self.fallbacks = self.fallbacks, []
        return taken

    # -- reading and preprocessing (nnU-Net's) ----------------------------------------------------------------
    def read(self, files: Sequence[str | Path]) -> tuple[np.ndarray, dict]:
        reader = self.model.plans_manager.image_reader_writer_class()
        return reader.read_images([str(f) for f in files])

    def preprocess(self, image: np.ndarray, properties: dict) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing (:mod:`stunet.prediction.preprocessing`); ``image`` is normalised in place."""
        self.fallbacks = []  # a new image: its own fallbacks only
        if self.air_rule is not None:
            self.air_threshold = self.air_rule.threshold(image[0])
        return preprocess(image, properties, self.model.plans_manager, self.model.configuration_manager,
                          self.model.dataset_json, self.device, self.note_fallback)

    # -- sliding window over features ---------------------------------------------------------------------------
    def _features(self, network: STUNet, tile: torch.Tensor) -> torch.Tensor:
        """The last decoder stage's features for a tile, averaged over the mirrorings (the head is linear);
        ``network`` may be an engine of :mod:`stunet.deploy.engines` (same ``decode``)."""
        combos = [()]
        if self.mirror_axes:
            axes = [a + 2 for a in self.mirror_axes]
            combos += [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        total = None
        for axes in combos:
            x = torch.flip(tile, axes) if axes else tile
            f = network.decode(x, all_stages=False)[0]
            f = torch.flip(f, axes) if axes else f
            total = f.float() if total is None else total.add_(f.float())
        return total.div_(len(combos)) if len(combos) > 1 else total

    def _timed_features(self, network: STUNet, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_features` of one tile (batch of one) at the predictor's precision, its time added to
        ``network_seconds``. The first tile at a reduced precision on the CPU is checked against fp32
        (:meth:`_check_precision`)."""
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else None
        began = time.perf_counter()
        with autocast or torch.autocast(self.device.type, enabled=False):
            f = self._features(network, x)[0]
        if not self._precision_checked:
            f = self._check_precision(network, x, f)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.network_seconds += time.perf_counter() - began
        return f

    def _check_precision(self, network: STUNet, x: torch.Tensor, reduced: torch.Tensor) -> torch.Tensor:
        """The first tile's features in fp32 against ``reduced`` (the same tile at the reduced precision): where they
        differ by more than rounding, the rest runs in fp32, with a note of the case, and the fp32 features are
        returned."""
        self._precision_checked = True
        exact = self._features(network, x)[0]
        difference = ((reduced - exact).norm() / exact.norm().clamp_min(1e-12)).item()
        if math.isfinite(difference) and difference <= LOW_PRECISION_TOLERANCE:
            return reduced
        name = {v: k for k, v in PRECISIONS.items()}[self.autocast_dtype]
        self.autocast_dtype, self.precision = None, "fp32"
        self.fallbacks.append(f"{name} on this CPU gave features {difference:.3g} (relative) away from fp32's on the "
                              f"first tile, beyond rounding ({LOW_PRECISION_TOLERANCE}); the network runs in fp32 "
                              f"(same result as --precision fp32)")
        return exact

    def _air_features(self, value: float, channels: int, patch: list[int]) -> list[torch.Tensor]:
        """Each network's features of a tile holding ``value`` everywhere, computed once per value."""
        if self._air is None or self._air[0] != value:
            tile = torch.full((1, channels, *patch), value, dtype=torch.float32, device=self.device)
            self._air = value, [self._timed_features(network, tile) for network in self.runners]
        return self._air[1]

    @torch.inference_mode()
    def blended_features(self, data: torch.Tensor, progress: Callable[[int], None] | None = None,
                         on_start: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """Gaussian-blended last-stage features of each network over the whole (preprocessed) image, (channels,
        *spatial) each."""
        (_, features), = self.feature_slabs(data, progress, on_start, window=False)
        return [f.movedim(-1, 0) for f in features]

    @torch.inference_mode()
    def feature_slabs(self, data: torch.Tensor, progress: Callable[[int], None] | None = None,
                      on_start: Callable[[int], None] | None = None,
                      window: bool = True) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """Yield ``(first row, [channels-last (rows, *spatial[1:], channels) features of each network])``: the
        Gaussian-blended last-stage features, rows along the first axis in order as they are finished. Tiles run
        first-axis-major, so with ``window`` the canvas holds only the rows one tile spans (a slab is a view, valid
        until the next is asked for); without it, one item: the whole image. ``network_seconds`` is the time the
        networks' forward passes took. With an ``air_rule`` (CT), the tiles the body misses are not run: the features
        of an all-air tile stand in for them (:mod:`stunet.prediction.body`; ``skipped_tiles`` counts them)."""
        patch = list(self.model.configuration_manager.patch_size)
        padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
        spatial = padded.shape[1:]
        two_d = len(patch) < len(spatial)
        steps = compute_steps_for_sliding_window(spatial[1:] if two_d else spatial, patch, self.step_size)
        tiles = [((z,) if two_d else ()) + tuple(slice(s, s + p) for s, p in zip(starts, patch))
                 for z in (range(spatial[0]) if two_d else [None]) for starts in itertools.product(*steps)]
        if on_start:
            on_start(len(tiles))
        self.tiles = len(tiles)
        self.network_seconds = 0.0
        run, air = [True] * len(tiles), None
        if self.air_threshold is not None:
            mask = body_mask(padded[0], self.air_threshold, revert[1:])
            run = tiles_to_run(mask, tiles)
            if not all(run):
                air = self._air_features(air_value(padded[0], mask), padded.shape[0], patch)
        self.skipped_tiles = run.count(False)
        rows = range(spatial[0])[revert[1]]  # the image's rows in the padded grid
        gaussian = compute_gaussian(tuple(patch), sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                    device=self.device)
        depth = (1 if two_d else patch[0]) if window else spatial[0]
        widths = [n.config.widths[0] for n in self.model.networks]
        try:  # channels last: the export reads all channels of one voxel together
            canvases = [torch.zeros((depth, *spatial[1:], w), dtype=torch.float32, device=self.device)
                        for w in widths]
            weights = torch.zeros((depth, *spatial[1:]), dtype=torch.float32, device=self.device)
        except torch.cuda.OutOfMemoryError:
            self.note_fallback("the blending canvas")
            canvases = [torch.zeros((depth, *spatial[1:], w), dtype=torch.float32) for w in widths]
            weights = torch.zeros((depth, *spatial[1:]), dtype=torch.float32)
            gaussian = gaussian.cpu()
        if two_d:
            gaussian = gaussian[None]
        base = 0  # the padded grid's row held in the canvases' row 0

        def finished(upto: int):
            """The rows [base, upto) as the image's rows (cropped like the image), divided by their weights."""
            count = upto - base
            for canvas in canvases:
                canvas[:count].div_(weights[:count].unsqueeze(-1))
            low, high = max(rows.start, base), min(rows.stop, upto)
            if high > low:
                return low - rows.start, [c[(slice(low - base, high - base), *revert[2:])] for c in canvases]
            return None

        for tile, needed in zip(tiles, run):
            start = tile[0] if two_d else tile[0].start
            if window and start > base:  # no later tile reaches the rows before ``start``
                done = finished(start)
                if done:
                    yield done
                shift, live = start - base, depth - (start - base)
                for i in range(0, live, shift):  # move the live rows to the front, in non-overlapping steps
                    n = min(shift, live - i)
                    for t in (*canvases, weights):
                        t[i:i + n] = t[i + shift:i + shift + n]
                for t in (*canvases, weights):
                    t[max(live, 0):].zero_()
                base = start
            x = padded[(slice(None), *tile)].unsqueeze(0).to(self.device) if needed else None  # a 2D tile's
            place = (slice(start - base, start - base + (1 if two_d else patch[0])), *tile[1:])  # index drops its axis
            for i, (network, canvas) in enumerate(zip(self.runners, canvases)):
                f = self._timed_features(network, x) if needed else air[i]
                f = f.to(canvas.device)
                canvas[place].addcmul_((f[:, None] if two_d else f).movedim(0, -1), gaussian.unsqueeze(-1))
            weights[place].add_(gaussian.to(weights.device))
            if progress:
                progress(1)
        done = finished(spatial[0])
        if done:
            yield done

    # -- back to the original grid ------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, data: torch.Tensor, properties: dict, lookup: torch.Tensor | None = None,
                probabilities_of: list[list[int]] | None = None, progress: Callable[[int], None] | None = None,
                on_start: Callable[[int], None] | None = None):
        """Label map (original geometry) and optionally probabilities from preprocessed ``data``: the sliding window
        and :meth:`segment`. When only labels are asked for and the output grid is finer than the network's, the
        export runs slab by slab as the tiles finish them (:func:`stunet.prediction.export.fine_labels`), so the features of
        the whole image are never held at once."""
        new_shape = properties["shape_after_cropping_and_before_resampling"]
        release_freed_memory()  # what reading and preprocessing freed is not resident while the network runs
        if probabilities_of is None and not self.model.label_manager.has_regions \
                and math.prod(new_shape) > math.prod(data.shape[1:]):
            chunks = fine_labels(self.model.networks, self.feature_slabs(data, progress, on_start), data.shape[1:],
                                 new_shape, self._orders(properties), self.chunk_slices, tally=self.tally,
                                 on_fallback=self.note_fallback)
            return self._assemble(chunks, properties, lookup), None
        return self.segment(self.blended_features(data, progress, on_start), properties, lookup, probabilities_of)

    def _orders(self, properties: dict) -> list[int]:
        pm, cm = self.model.plans_manager, self.model.configuration_manager
        new_spacing = [properties["spacing"][i] for i in pm.transpose_forward]
        current_spacing = resampled_spacing(cm.spacing, new_spacing)
        return axis_orders(current_spacing, new_spacing, cm.configuration.get("resampling_fn_probabilities_kwargs", {}))

    @torch.inference_mode()
    def segment(self, features: list[torch.Tensor], properties: dict, lookup: torch.Tensor | None = None,
                probabilities_of: list[list[int]] | None = None):
        """Label map (original geometry, before writing) and optionally probabilities, from blended features.

        ``lookup`` maps model classes to output labels; ``probabilities_of`` lists, per output label, the model
        classes whose probabilities add up to it.
        """
        new_shape = properties["shape_after_cropping_and_before_resampling"]
        orders = self._orders(properties)
        probs = np.zeros((len(probabilities_of), *new_shape), dtype=np.float16) if probabilities_of else None
        last = [f.movedim(0, -1) for f in features]  # views: the canvases are channels last
        if probabilities_of is None and not self.model.label_manager.has_regions \
                and math.prod(new_shape) > math.prod(features[0].shape[1:]):
            chunks = fine_labels(self.model.networks, [(0, last)], features[0].shape[1:], new_shape, orders,
                                 self.chunk_slices, tally=self.tally, on_fallback=self.note_fallback)
        else:
            chunks = self._resampled_labels(last, new_shape, orders, probabilities_of, probs)
        seg = self._assemble(chunks, properties, lookup)
        if probs is not None:
            pm = self.model.plans_manager
            holder = np.zeros((probs.shape[0], *properties["shape_before_cropping"]), dtype=np.float16)
            holder[(slice(None), *[slice(a, b) for a, b in properties["bbox_used_for_cropping"]])] = probs
            probs = holder.transpose([0] + [i + 1 for i in pm.transpose_backward])
        return seg, probs

    def _assemble(self, chunks, properties: dict, lookup: torch.Tensor | None) -> np.ndarray:
        """The label map in the original geometry from ``(rows, model classes)`` chunks of the cropped region."""
        max_label = int(lookup.max()) if lookup is not None else max(self.model.label_manager.all_labels)
        dtype = np.uint8 if max_label < 256 else np.uint16 if max_label < 65536 else np.int32
        full = np.zeros(properties["shape_before_cropping"], dtype=dtype)
        seg = full[tuple(slice(a, b) for a, b in properties["bbox_used_for_cropping"])]
        for rows, labels in chunks:
            if lookup is not None:
                labels = lookup.to(labels.device)[labels.long()]
            seg[rows] = labels.cpu().numpy()
        return full.transpose(self.model.plans_manager.transpose_backward)

    def _resampled_labels(self, features, new_shape, orders, probabilities_of, probs):
        """(rows, labels) chunks from the features (channels last) resampled to the output grid, the head and the
        argmax (nnU-Net's softmax where probabilities are asked for, its region handling for region-based models)."""
        lm = self.model.label_manager
        networks = self.model.networks
        chunks = [resample_chunks(f, new_shape, orders, self.chunk_slices) for f in features]
        for parts in zip(*chunks):
            rows, shape = parts[0][0], parts[0][1].shape[:-1]
            flat = [p.reshape(-1, p.shape[-1]) for _, p in parts]
            if probabilities_of is None and not lm.has_regions:
                yield rows, argmax(networks, flat, tally=self.tally).view(shape)  # the argmax of the softmax
                continue
            logits = head_logits(networks, flat)
            if self.tally is not None and not lm.has_regions:
                self.tally.add(logits.argmax(1), logits)
            logits = logits.T.reshape(-1, *shape)
            if probabilities_of is not None:
                classes = lm.apply_inference_nonlin(logits)
                labels = lm.convert_probabilities_to_segmentation(classes)
                for i, members in enumerate(probabilities_of):
                    probs[i, rows] = classes[members].sum(0).cpu().numpy()
            else:
                labels = lm.convert_logits_to_segmentation(logits)
            yield rows, torch.as_tensor(labels)
