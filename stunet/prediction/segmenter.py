"""Load a model once, segment many images in memory or folders on disk: ``stunet.Segmenter``.

    seg = stunet.Segmenter.from_path("stunet_base.totalseg104")           # a released name, a model folder, or an
                                                                           # exported .onnx file
    labels = seg(nib.load("ct.nii.gz"))                                    # a nibabel image with the input's affine
    labels, probs = seg(sitk.ReadImage("ct.nii.gz"), probabilities=True)  # a SimpleITK image (+ float16 maps)
    labels = seg(array, spacing=(0.8, 0.8, 1.5))                           # a numpy array placed by spacing or affine
    run = seg.predict_folder("cts/", "segs/")                              # what stunet-predict -i cts/ -o segs/ does

A call runs :func:`stunet.prediction.case.predict_case`, the path ``stunet-predict`` runs for every case: the same
checks of files, headers, geometry, voxel budget and values (an image the command refuses raises the same
:class:`~stunet.errors.CaseError` here; repaired NaN/inf voxels are warned), nnU-Net's preprocessing, the blended
sliding window and the export onto the input's grid. One lock serialises the calls, so a Segmenter can be shared
between threads. :meth:`predict_folder` runs :func:`stunet.prediction.folder.predict_folder`, the command's folder
run; :meth:`provenance` gives the record it writes as provenance.json.

The device is the command's: ``"auto"`` is CUDA when available (torch backend), and ``"cuda"`` under torchrun or
srun is the local rank's GPU (:func:`~stunet.prediction.parts.local_device`). A Segmenter whose network runs on the
CPU configures the process's allocator with :func:`stunet.cpu_memory.reuse_freed_memory` (faster forward passes; the
process keeps its peak memory).
"""
from __future__ import annotations

import threading
import warnings
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from stunet.cpu_memory import reuse_freed_memory
from stunet.deploy.engines import (BACKENDS, SPEEDS, check_backend, describe_backend, fastest_engine, installed,
                                   native_bf16, openvino_capabilities)
from stunet.deploy.sidecar import GraphNetwork, read_exported
from stunet.prediction.budget import VoxelBudget
from stunet.prediction.case import CaseResult, predict_case
from stunet.prediction.folder import FolderRun, predict_folder
from stunet.prediction.images import labels_to_sitk
from stunet.prediction.model import Model, load_model_folder, load_pretrained
from stunet.prediction.output_labels import output_labels
from stunet.prediction.outputs import label_description, provenance
from stunet.prediction.parts import local_device
from stunet.prediction.sliding_window import Predictor
from stunet.weights.pretrained import list_pretrained


def choose_device(device: str, backend: str = "torch") -> str:
    """The device a Segmenter runs on: ``"auto"`` is CUDA when available and the backend is torch, else the CPU;
    ``"cuda"`` under torchrun or srun is the local rank's GPU. On the CPU the allocator keeps freed memory for reuse
    (:func:`~stunet.cpu_memory.reuse_freed_memory`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and backend == "torch" else "cpu"
    device = local_device(device)
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    return device


def is_exported(source: str | Path) -> bool:
    """Whether ``source`` names an exported graph (``OUT.onnx``, with its sidecar ``OUT.json``)."""
    return Path(source).suffix == ".onnx"


def load_source(source: str | Path, folds: Sequence[str] | None = None, checkpoint: str | Path | None = None,
                checkpoint_name: str = "checkpoint_final.pth", trust: bool = False) -> Model:
    """The model of ``source``: a released model's name (a ``str`` among
    :func:`~stunet.weights.pretrained.list_pretrained`; its weights from ``checkpoint``, else the cache), an
    exported ``.onnx`` file with its sidecar, or an nnU-Net v2 model folder (``folds``, ``checkpoint_name``). A
    ``Path`` is always a file or folder."""
    if isinstance(source, str) and source in list_pretrained():
        return load_pretrained(source, checkpoint, trust=trust)
    if checkpoint is not None:
        raise ValueError(f"checkpoint= goes with a released model's name ({', '.join(list_pretrained())}), not "
                         f"{source}")
    if is_exported(source):
        if folds:
            raise ValueError(f"{source}: folds go with a model folder; an ONNX file holds one network")
        return Model(**read_exported(source))
    return load_model_folder(source, folds, checkpoint_name, trust=trust)


class Segmenter:
    """A model loaded once, segmenting images in memory or on disk. Thread-safe: calls are serialised.

    ``Segmenter(pretrained=NAME[, checkpoint=FILE])`` or ``Segmenter(model_folder=FOLDER[, folds=...])`` (also
    ``Segmenter.from_model_folder``, and ``Segmenter.from_path`` for either or an exported graph); ``labels=`` /
    ``label_map=`` restrict or map the output labels and ``max_voxels=`` sets the voxel budget, as ``stunet-predict --labels/--label-map/--max-voxels`` do;
    ``backend="onnxruntime"`` or ``"openvino"`` runs the networks as exported graphs on the CPU (as ``--backend``;
    docs/deployment.md), at ``precision``; ``speed="fastest"`` picks the fastest backend and precision installed
    here instead (:func:`~stunet.deploy.engines.fastest_engine`; ``speed_choice`` says which), as ``--speed
    fastest``. ``skip_air`` (CT models) leaves out the tiles that hold no body (:mod:`stunet.prediction.body`), as
    ``--no-skip`` does not.
    """

    def __init__(self, pretrained: str | None = None, checkpoint: str | Path | None = None, *,
                 model_folder: str | Path | None = None, folds: Sequence[str] | None = None,
                 checkpoint_name: str = "checkpoint_final.pth", model: Model | None = None, device: str = "auto",
                 step_size: float = 0.5, mirroring: bool = True, precision: str = "auto", trust: bool = False,
                 labels: str | None = None, label_map: str | None = None, max_voxels: float | None = None,
                 backend: str = "torch", speed: str = "exact", skip_air: bool = True):
        if sum(x is not None for x in (pretrained, model_folder, model)) != 1:
            raise ValueError("give one of pretrained=NAME, model_folder=FOLDER or model=Model")
        if checkpoint is not None and pretrained is None:
            raise ValueError("checkpoint= goes with pretrained=NAME (the released model it is)")
        if speed not in SPEEDS:
            raise ValueError(f"unknown speed {speed!r}; choose {' or '.join(SPEEDS)}")
        if speed == "fastest" and (backend != "torch" or precision != "auto"):
            raise ValueError("speed='fastest' (--speed fastest) chooses the backend and precision itself; leave "
                             "backend and precision out")
        device = choose_device(device, backend)
        if model is None:
            model = (load_pretrained(pretrained, checkpoint, trust=trust) if pretrained
                     else load_model_folder(model_folder, folds, checkpoint_name, trust=trust))
        self.speed_choice = None  # with speed="fastest": the backend and precision picked, and why
        if speed == "fastest":
            backend, precision, why = fastest_engine(
                torch.device(device).type, {b for b in BACKENDS if installed(b)}, openvino_capabilities(),
                native_bf16(), any(isinstance(n, GraphNetwork) for n in model.networks))
            device = device if backend == "torch" else choose_device("cpu", backend)
            self.speed_choice = f"{backend} {precision} ({why})"
        check_backend(backend)
        if backend == "torch" and any(isinstance(n, GraphNetwork) for n in model.networks):
            raise ValueError("an exported ONNX graph runs on the onnxruntime or openvino backend, not torch")
        self.model = model
        self.predictor = Predictor(model, device, step_size, mirroring, precision, backend=backend, skip_air=skip_air)
        self.label_names, self.lookup, self.members = output_labels(model.label_names, label_map, labels)
        self.max_voxels = max_voxels
        self.budget(False)  # a bad max_voxels or STUNET_MAX_VOXELS fails now, not at the first image
        self.options = {"step_size": step_size, "mirroring": mirroring, "precision": precision, "device": str(device),
                        "labels": labels, "label_map": label_map, "max_voxels": max_voxels, "backend": backend,
                        "speed": speed, "speed_choice": self.speed_choice,
                        "skip_air": self.predictor.air_rule.describe() if self.predictor.air_rule else False,
                        "engine": describe_backend(backend, self.predictor.precision, None if backend == "torch"
                                                   else self.predictor.runners)}
        self._lock = threading.RLock()  # predict() holds it around the phases that take it too
        self.timings: dict[str, float] = {}  # seconds per phase of the last case
        self.last: CaseResult | None = None  # the last case's result (notes, timings, tiles)

    @classmethod
    def from_model_folder(cls, folder: str | Path, folds: Sequence[str] | None = None, **kwargs) -> "Segmenter":
        return cls(model_folder=folder, folds=folds, **kwargs)

    @classmethod
    def from_path(cls, source: str | Path, folds: Sequence[str] | None = None, *,
                  checkpoint: str | Path | None = None, checkpoint_name: str = "checkpoint_final.pth",
                  trust: bool = False, backend: str | None = None, **kwargs) -> "Segmenter":
        """A Segmenter of a released model's name, an exported ``.onnx`` file or a model folder (:func:`load_source`),
        as ``stunet-predict --pretrained`` / ``-m`` load them. ``backend`` defaults to ``"onnxruntime"`` for an
        ONNX file and ``"torch"`` otherwise; the other keywords are the constructor's."""
        if backend is None:
            fastest = kwargs.get("speed") == "fastest"  # which picks the backend itself
            backend = "onnxruntime" if is_exported(source) and not fastest else "torch"
        device = choose_device(kwargs.pop("device", "auto"), backend)  # the allocator is set before the loading
        model = load_source(source, folds, checkpoint, checkpoint_name, trust)
        return cls(model=model, device=device, backend=backend, **kwargs)

    # -- the engine predict_case drives ---------------------------------------------------------------------------
    def budget(self, probabilities: bool) -> VoxelBudget:
        """The voxel budget of one case (``max_voxels``, else $STUNET_MAX_VOXELS, else the default and the memory
        check), counting the probability maps when they are asked for."""
        return VoxelBudget.for_model(self.model, self.max_voxels, len(self.label_names) if probabilities else 0)

    def read_files(self, files: Sequence[str | Path]) -> tuple[np.ndarray, dict]:
        """The plans' reader output of image files (one per channel), unchecked: use :meth:`__call__`."""
        return self.predictor.read(files)

    def preprocess(self, image: np.ndarray, properties: dict) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of the reader's output; ``image`` is normalised in place."""
        with self._lock:
            start = time.perf_counter()
            result = self.predictor.preprocess(image, properties)
            self.timings = {"preprocess": time.perf_counter() - start}
            return result

    def segment_preprocessed(self, data: torch.Tensor, properties: dict, probabilities: bool = False,
                             progress: Callable[[int], None] | None = None,
                             on_start: Callable[[int], None] | None = None):
        """The sliding window and the export onto the input grid; ``timings`` has ``network`` (the forward passes)
        and ``export`` (the rest, blending included) afterwards."""
        with self._lock:
            start = time.perf_counter()
            result = self.predictor.predict(data, properties, self.lookup, self.members if probabilities else None,
                                            progress, on_start)
            network = self.predictor.network_seconds
            self.timings.update(network=network, export=time.perf_counter() - start - network)
            return result

    # -- what users call ------------------------------------------------------------------------------------------
    def predict(self, image, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                probabilities: bool = False, warn: bool = True, **options) -> CaseResult:
        """The whole :class:`~stunet.prediction.case.CaseResult` of one case (label array in nnU-Net's (z, y, x)
        order, notes, timings); ``options`` go to :func:`~stunet.prediction.case.predict_case`. Each note (repaired
        voxels, work moved to the CPU) is a warning unless ``warn`` is False."""
        with self._lock:  # one case at a time, from reading to export (the budget's memory check assumes it)
            result = predict_case(self, image, spacing=spacing, affine=affine, probabilities=probabilities, **options)
        self.last = result
        if warn:
            for note in result.notes:
                warnings.warn(note, stacklevel=2)
        return result

    def __call__(self, image, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                 probabilities: bool = False):
        """Segment one case: a SimpleITK image, a nibabel image, a path (NIfTI/NRRD/MHA file, DICOM folder, zip or
        file), or a numpy array with ``spacing=`` or ``affine=`` (nibabel's axis order and RAS convention); a list of
        them for a multi-channel model. Returns the label map in the input's kind and geometry (a SimpleITK image for
        a path, an array of the input's shape for an array), and with ``probabilities=True`` also float16 maps, one per
        output label, indexed like the returned label array."""
        result = self.predict(image, spacing, affine, probabilities)
        probs = result.probabilities
        labels = self.to_sitk(result.labels, result.properties)
        reference = result.reference
        if reference is None or isinstance(reference, sitk.Image):
            if isinstance(reference, sitk.Image):
                labels.CopyInformation(reference)
            return (labels, probs) if probabilities else labels
        array = np.ascontiguousarray(sitk.GetArrayFromImage(labels).transpose(2, 1, 0))
        probs = None if probs is None else np.ascontiguousarray(probs.transpose(0, 3, 2, 1))
        if isinstance(reference, np.ndarray):
            out = array
        else:
            import nibabel as nib
            out = nib.Nifti1Image(array, reference.affine)
            out.header.set_xyzt_units(*reference.header.get_xyzt_units())
            out.header["descrip"] = self.description()[:79].encode()
        return (out, probs) if probabilities else out

    def predict_folder(self, input: str | Path, output: str | Path, **settings) -> FolderRun:
        """Segment a folder (or one file, a DICOM series, a zip) into the folder ``output`` as ``stunet-predict``
        does: :func:`stunet.prediction.folder.predict_folder`, whose keywords ``settings`` are."""
        return predict_folder(self, input, output, **settings)

    def to_sitk(self, seg: np.ndarray, properties: dict) -> sitk.Image:
        """A label map of :meth:`predict` as a SimpleITK image on the input's grid."""
        return labels_to_sitk(self.model, seg, properties)

    def description(self) -> str:
        """Label names in a short text (NIfTI descrip: 80 bytes)."""
        return label_description(self.label_names)

    def provenance(self, options: dict | None = None) -> dict:
        """What produced the results: versions, the model, its checkpoints' SHA-256 and the options in force (the
        command's provenance.json)."""
        return provenance(self.model, self.model.checkpoints, {**self.options, **(options or {})})
