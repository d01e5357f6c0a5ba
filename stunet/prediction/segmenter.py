"""Load a model once, segment many images in memory: ``stunet.Segmenter``.

    seg = stunet.Segmenter(pretrained="stunet_base.totalseg104")          # or Segmenter.from_model_folder(folder)
    labels = seg(nib.load("ct.nii.gz"))                                    # a nibabel image with the input's affine
    labels, probs = seg(sitk.ReadImage("ct.nii.gz"), probabilities=True)  # a SimpleITK image (+ float16 maps)

Images go through exactly the path of ``stunet-predict`` (which uses this class): the plans' reader properties are
built from the in-memory image as nnU-Net's SimpleITK reader builds them from a file (an image of another reader is
written to a temporary NIfTI file and read back with that reader), then nnU-Net's preprocessing, the blended
sliding window and the export onto the input's grid (:mod:`stunet.inference`). One lock serialises the calls, so a
Segmenter can be shared between threads.
"""
from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from stunet.prediction.model import Model
from stunet.prediction.sliding_window import Predictor

_LPS = np.diag([-1.0, -1.0, 1.0])  # nibabel's RAS+ world <-> ITK's LPS+ world


def sitk_properties(image: sitk.Image) -> tuple[np.ndarray, dict]:
    """(channels, z, y, x) float32 array and the properties nnU-Net's ``SimpleITKIO.read_images`` gives for a file
    holding ``image`` (3D, scalar)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"a 3D scalar image is needed, not {image.GetDimension()}D with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s)")
    spacing = image.GetSpacing()
    properties = {"sitk_stuff": {"spacing": spacing, "origin": image.GetOrigin(), "direction": image.GetDirection()},
                  "spacing": list(np.abs(list(spacing)[::-1]))}
    return sitk.GetArrayFromImage(image)[None].astype(np.float32), properties


def nibabel_to_sitk(image) -> sitk.Image:
    """A nibabel image as a SimpleITK image of the same voxels in the same place (RAS affine -> LPS geometry)."""
    data = np.asanyarray(image.dataobj)
    if data.ndim != 3:
        raise ValueError(f"a 3D image is needed, not shape {data.shape}")
    return array_to_sitk(data, affine=image.affine)


def array_to_sitk(array: np.ndarray, spacing: Sequence[float] | None = None,
                  affine: np.ndarray | None = None) -> sitk.Image:
    """A numpy array indexed (i, j, k) like nibabel's data, placed by a RAS voxel-to-world ``affine`` (nibabel's
    convention) or, without one, by ``spacing`` (per array axis, mm) on an identity RAS grid."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"a 3D array is needed, not shape {array.shape}")
    if affine is None:
        if spacing is None:
            raise ValueError("a numpy array needs spacing= (mm per axis) or affine= (4x4, RAS) to be placed")
        affine = np.diag([*map(float, spacing), 1.0])
    affine = np.asarray(affine, dtype=float)
    lps = _LPS @ affine[:3, :3]
    zooms = np.linalg.norm(lps, axis=0)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise ValueError(f"the affine has a zero or non-finite column: {affine.tolist()}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(zooms))
    image.SetOrigin(tuple(_LPS @ affine[:3, 3]))
    image.SetDirection(tuple((lps / zooms).ravel()))
    return image


@dataclass
class _Kind:
    """How to give a result back in the input's kind."""
    name: str  # "sitk", "nibabel", "numpy"
    reference: object = None  # the first input (its geometry and header)


class Segmenter:
    """A model loaded once, segmenting images in memory or on disk. Thread-safe: calls are serialised.

    ``Segmenter(pretrained=NAME[, checkpoint=FILE])`` or ``Segmenter(model_folder=FOLDER[, folds=...])`` (also
    ``Segmenter.from_model_folder``); ``labels=`` / ``label_map=`` restrict or map the output labels as
    ``stunet-predict --labels/--label-map`` do.
    """

    def __init__(self, pretrained: str | None = None, checkpoint: str | Path | None = None, *,
                 model_folder: str | Path | None = None, folds: Sequence[str] | None = None,
                 checkpoint_name: str = "checkpoint_final.pth", model: Model | None = None, device: str = "auto",
                 step_size: float = 0.5, mirroring: bool = True, precision: str = "auto", trust: bool = False,
                 labels: str | None = None, label_map: str | None = None):
        from stunet.prediction.model import load_model_folder, load_pretrained
        if sum(x is not None for x in (pretrained, model_folder, model)) != 1:
            raise ValueError("give one of pretrained=NAME, model_folder=FOLDER or model=Model")
        if checkpoint is not None and pretrained is None:
            raise ValueError("checkpoint= goes with pretrained=NAME (the released model it is)")
        if model is None:
            model = (load_pretrained(pretrained, checkpoint, trust=trust) if pretrained
                     else load_model_folder(model_folder, folds, checkpoint_name, trust=trust))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model
        self.predictor = Predictor(model, device, step_size, mirroring, precision)
        from stunet.prediction.output_labels import output_labels
        self.label_names, self.lookup, self.members = output_labels(model.label_names, label_map, labels)
        self.options = {"step_size": step_size, "mirroring": mirroring, "precision": precision, "device": str(device),
                        "labels": labels, "label_map": label_map}
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}  # seconds per phase of the last case

    @classmethod
    def from_model_folder(cls, folder: str | Path, folds: Sequence[str] | None = None, **kwargs) -> "Segmenter":
        return cls(model_folder=folder, folds=folds, **kwargs)

    # -- the one code path ----------------------------------------------------------------------------------------
    def segment_array(self, image: np.ndarray, properties: dict, probabilities: bool = False,
                      progress: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None):
        """(label map on the input grid (z, y, x), probabilities or None) from the plans' reader output. ``image`` is
        normalised in place (preprocessing takes it over)."""
        data, properties = self.preprocess(image, properties)
        del image
        return self.segment_preprocessed(data, properties, probabilities, progress, on_start)

    def preprocess(self, image: np.ndarray, properties: dict) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of the reader's output; ``image`` is normalised in place, so a caller that drops
        its own reference afterwards frees it before the network runs."""
        with self._lock:
            start = time.perf_counter()
            result = self.predictor.preprocess(image, properties)
            self.timings = {"preprocess": time.perf_counter() - start}
            return result

    def segment_preprocessed(self, data: torch.Tensor, properties: dict, probabilities: bool = False,
                             progress: Callable[[int], None] | None = None,
                             on_start: Callable[[int], None] | None = None):
        """The sliding window and the export onto the input grid (see :meth:`segment_array`); the seconds each took
        are in ``timings`` afterwards (``network``: the forward passes; ``export``: the rest, blending included;
        ``preprocess`` from :meth:`preprocess`)."""
        with self._lock:
            start = time.perf_counter()
            result = self.predictor.predict(data, properties, self.lookup, self.members if probabilities else None,
                                            progress, on_start)
            network = self.predictor.network_seconds
            self.timings.update(network=network, export=time.perf_counter() - start - network)
            return result

    def read(self, images) -> tuple[np.ndarray, dict, _Kind]:
        """The plans' reader output for in-memory images or files (one per input channel)."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(items) != self.model.num_input_channels:
            raise ValueError(f"the model takes {self.model.num_input_channels} channel(s); got {len(items)} image(s)"
                             f" (give a list, one image per channel)")
        first = items[0]
        if isinstance(first, (str, Path)):
            path = Path(first)
            if len(items) == 1 and (path.is_dir() or path.suffix.lower() in (".zip", ".dcm")):
                from stunet.clinical.dicom import read_dicom
                items = [read_dicom(path).image]
            else:
                arrays, properties = self.predictor.read([Path(p) for p in items])
                return arrays, properties, _Kind("sitk", sitk.ReadImage(str(items[0])))
        if isinstance(items[0], sitk.Image):
            kind, sitk_images = _Kind("sitk", items[0]), items
        elif hasattr(items[0], "affine") and hasattr(items[0], "dataobj"):
            kind, sitk_images = _Kind("nibabel", items[0]), [nibabel_to_sitk(i) for i in items]
        else:
            raise TypeError(f"give a SimpleITK or nibabel image, a path, or use segment_numpy for arrays; got "
                            f"{type(first).__name__}")
        return (*self._reader_output(sitk_images), kind)

    def _reader_output(self, images: list[sitk.Image]) -> tuple[np.ndarray, dict]:
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        reader = self.model.plans_manager.image_reader_writer_class
        if reader is SimpleITKIO:
            parts = [sitk_properties(i) for i in images]
            for other in images[1:]:
                if other.GetSize() != images[0].GetSize() or not np.allclose(other.GetSpacing(),
                                                                           images[0].GetSpacing()):
                    raise ValueError("the channels' images differ in size or spacing")
            return np.vstack([p[0] for p in parts]), parts[0][1]
        with tempfile.TemporaryDirectory(prefix="stunet-") as tmp:  # another reader: its own reading of a file
            files = [Path(tmp) / f"image_{c:04d}.nii.gz" for c in range(len(images))]
            for path, image in zip(files, images):
                sitk.WriteImage(image, str(path))
            return self.predictor.read(files)

    def __call__(self, image, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                 probabilities: bool = False):
        """Segment one case: a SimpleITK image, a nibabel image, a path (NIfTI/NRRD/MHA file, DICOM folder or zip),
        or a numpy array with ``spacing=`` or ``affine=`` (see :func:`array_to_sitk`); a list of them for a
        multi-channel model. Returns the label map in the input's kind and geometry (a SimpleITK image for a path,
        an array of the input's shape for an array), and with ``probabilities=True`` also float16 maps, one per output
        label, indexed like the returned label array."""
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        if isinstance(items[0], np.ndarray):
            sitk_images = [array_to_sitk(a, spacing, affine) for a in items]
            arrays, properties = self._reader_output(sitk_images)
            kind = _Kind("numpy", items[0])
            del sitk_images
        else:
            if spacing is not None or affine is not None:
                raise ValueError("spacing= and affine= are for numpy arrays; images carry their own geometry")
            arrays, properties, kind = self.read(items)
        data, properties = self.preprocess(arrays, properties)
        del arrays  # normalised in place: nothing else uses it
        seg, probs = self.segment_preprocessed(data, properties, probabilities)
        del data
        labels = self.to_sitk(seg, properties)
        if kind.name == "sitk":
            if isinstance(kind.reference, sitk.Image):
                labels.CopyInformation(kind.reference)
            return (labels, probs) if probabilities else labels
        array = np.ascontiguousarray(sitk.GetArrayFromImage(labels).transpose(2, 1, 0))
        probs = None if probs is None else np.ascontiguousarray(probs.transpose(0, 3, 2, 1))
        if kind.name == "nibabel":
            import nibabel as nib
            out = nib.Nifti1Image(array, kind.reference.affine)
            out.header.set_xyzt_units(*kind.reference.header.get_xyzt_units())
            out.header["descrip"] = self.description()[:79].encode()
        else:
            out = array
        return (out, probs) if probabilities else out

    def to_sitk(self, seg: np.ndarray, properties: dict) -> sitk.Image:
        """The label map of :meth:`segment_array` as a SimpleITK image on the input's grid (through the plans'
        writer when the reader is not nnU-Net's SimpleITK one)."""
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        if self.model.plans_manager.image_reader_writer_class is SimpleITKIO:
            out = sitk.GetImageFromArray(seg)
            out.SetSpacing(properties["sitk_stuff"]["spacing"])
            out.SetOrigin(properties["sitk_stuff"]["origin"])
            out.SetDirection(properties["sitk_stuff"]["direction"])
            return out
        writer = self.model.plans_manager.image_reader_writer_class()
        with tempfile.TemporaryDirectory(prefix="stunet-") as tmp:
            writer.write_seg(seg, str(Path(tmp) / "seg.nii.gz"), properties)
            return sitk.ReadImage(str(Path(tmp) / "seg.nii.gz"))

    def description(self) -> str:
        """Label names in a short text (NIfTI descrip: 80 bytes)."""
        return "stunet labels " + ";".join(f"{i}={n}" for i, n in sorted(self.label_names.items()) if i)
