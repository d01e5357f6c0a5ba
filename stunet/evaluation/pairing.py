"""Finding the label images of a reference and a prediction folder, pairing them by case name, reading them onto one
grid, and finding the label names.

Folders as nnU-Net and stunet-predict lay them out: a folder of label images (``labelsTr``, ``fold_N/validation``,
stunet-predict's output), a dataset folder holding ``labelsTr`` (and ``dataset.json``), or a trainer folder holding
``fold_N/validation`` (each fold's validation cases together: the cross-validation's predictions). A case's name is
its file name without the ending: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd`` (any letter case), or
``.seg.dcm`` / ``.dcm`` for a DICOM-SEG (a DICOM-SEG needs the ``dicom`` extra).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stunet.clinical.dicom_seg import require  # the dicom extra, for DICOM-SEG label images
from stunet.io.json_file import read_json
from stunet.io.reader import DEFAULT_MAX_VOXELS, Image, read_image
from stunet.labels import IGNORE, canonical, label_values_of
from stunet.paths import split_ending

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.dcm", ".dcm")
DICOM_ENDINGS = (".seg.dcm", ".dcm")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def split_name(path: Path) -> tuple[str, str] | None:
    """(case name, ending in lower case) of a label image's file name; None for other files and empty case names."""
    split = split_ending(path, ENDINGS)
    return split if split and split[0] else None


def _label_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = split_name(path) if path.is_file() and not path.name.startswith(".") else None
        if split is None:
            continue
        name = split[0]
        if name in found and (split[1] in DICOM_ENDINGS) != (split_name(found[name])[1] in DICOM_ENDINGS):
            if split[1] not in DICOM_ENDINGS:  # stunet-predict --output-type both: the image file is read
                found[name] = path
            continue
        if name in found:
            raise ValueError(f"{folder}: two label images for case {name!r} ({found[name].name} and {path.name}); "
                             f"keep one")
        found[name] = path
    return found


def _folds(folder: Path) -> list[Path]:
    return sorted((p / "validation" for p in folder.glob("fold_*") if (p / "validation").is_dir()),
                  key=lambda p: p.parent.name)


def find_label_images(folder: Path | str) -> dict[str, Path]:
    """Case name -> label image of a folder, of its ``labelsTr``, or of its ``fold_*/validation`` folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = _label_files(folder)
    if found:
        return found
    if (folder / "labelsTr").is_dir():
        return _label_files(folder / "labelsTr")
    for validation in _folds(folder):
        for name, path in _label_files(validation).items():
            if name in found:
                raise ValueError(f"{folder}: case {name!r} is in two folds' validation ({found[name]} and {path})")
            found[name] = path
    return found


@dataclass
class Pairs:
    cases: list[tuple[str, Path, Path]]  # (case, reference, prediction), sorted by case
    missing: list[str]  # references without a prediction
    unmatched: list[str]  # predictions without a reference


def pair_cases(reference: Path | str, prediction: Path | str) -> Pairs:
    refs, preds = find_label_images(reference), find_label_images(prediction)
    if not refs:
        raise ValueError(f"{reference}: no label images ({', '.join(ENDINGS)}), labelsTr or fold_*/validation")
    if not preds:
        raise ValueError(f"{prediction}: no label images ({', '.join(ENDINGS)}) or fold_*/validation")
    common = sorted(set(refs) & set(preds))
    if not common:
        raise ValueError(f"no case names in common between {reference} ({len(refs)} cases, e.g. {min(refs)!r}) and "
                         f"{prediction} ({len(preds)}, e.g. {min(preds)!r}); images (case_0000) instead of labels?")
    return Pairs([(c, refs[c], preds[c]) for c in common], sorted(set(refs) - set(preds)),
                 sorted(set(preds) - set(refs)))


# -- label names ------------------------------------------------------------------------------------------------------
@dataclass
class LabelSet:
    """The labels to evaluate: name -> label values (one value, or several for an nnU-Net region), the ignore label,
    and where they came from."""
    labels: dict[str, tuple[int, ...]]
    ignore: int | None = None
    source: str = ""

    def value_text(self, name: str) -> str:
        return ",".join(str(v) for v in self.labels[name])


def parse_labels(data: dict, source: str = "") -> LabelSet:
    """nnU-Net's dataset.json (``{"labels": {"background": 0, "liver": 1, "tumour": [1, 2], "ignore": 3}}``) or a
    labels.json (``{"0": "background", "1": "liver"}``, as stunet-predict writes), as a :class:`LabelSet`."""
    if not isinstance(data, dict):
        raise ValueError(f"{source or 'labels'}: expected a JSON object")
    labels: dict[str, tuple[int, ...]] = {}
    ignore = None
    if isinstance(data.get("labels"), dict):  # dataset.json
        for name, values in label_values_of(data, source or "dataset.json").items():
            if name == IGNORE:
                ignore = values[0]
            elif values != (0,):
                labels[str(name)] = values
    else:  # labels.json: index -> name
        try:
            for index, name in sorted(data.items(), key=lambda kv: int(kv[0])):
                if int(index) != 0:
                    labels[str(name)] = (int(index),)
        except (TypeError, ValueError):
            raise ValueError(f"{source or 'labels'}: neither a dataset.json (with \"labels\") nor a labels.json "
                             f"(label index -> name)") from None
    if not labels:
        raise ValueError(f"{source or 'labels'}: no foreground labels")
    return LabelSet(labels, ignore, source)


def read_label_file(path: Path | str) -> LabelSet:
    path = Path(path)
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read labels ({type(e).__name__}: {e})") from None
    return parse_labels(data, str(path))


def find_label_set(reference: Path, prediction: Path) -> LabelSet | None:
    """Labels found where the documented layouts keep them, and nowhere else: the predictions' labels.json
    (stunet-predict), else the dataset.json of the reference's dataset folder (given, or holding the given
    ``labelsTr``/``labelsTs``) or of the predictions' trainer folder (given, or holding the given
    ``fold_N/validation``)."""
    reference, prediction = Path(reference), Path(prediction)
    candidates = [prediction / "labels.json", prediction / "dataset.json", reference / "dataset.json"]
    if reference.name in ("labelsTr", "labelsTs"):
        candidates.append(reference.parent / "dataset.json")
    if prediction.name == "validation" and prediction.parent.name.startswith("fold_"):
        candidates.append(prediction.parent.parent / "dataset.json")
    for path in candidates:
        if path.is_file():
            return read_label_file(path)
    return None


# -- reading ----------------------------------------------------------------------------------------------------------
@dataclass
class LabelImage:
    array: np.ndarray  # integer labels, (z, y, x) as SimpleITK's arrays
    image: Image  # geometry (and the voxels)

    @property
    def spacing(self) -> tuple[float, ...]:
        """mm per axis in the array's order."""
        return tuple(float(s) for s in reversed(self.image.spacing))


def _integers(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise ValueError(f"{path}: not a label image (values that are not whole numbers)")
    return rounded.astype(np.int32 if rounded.max(initial=0) > 32767 or rounded.min(initial=0) < -32768 else np.int16)


def _read_dicom_seg(path: Path, labels: LabelSet | None) -> sitk.Image:
    """A DICOM-SEG as a label image: each segment's voxels get the label whose name is the segment's label (compared
    as :func:`stunet.labels.canonical` compares names), or the segment number when no name matches."""
    require()
    import highdicom as hd
    import pydicom

    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise ValueError(f"{path}: cannot read it as DICOM ({e})") from None
    if str(getattr(header, "SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise ValueError(f"{path}: a DICOM file but not a DICOM-SEG (SOP class {getattr(header, 'SOPClassUID', '?')}); "
                         f"label images must be DICOM-SEG, NIfTI, NRRD or MetaImage")
    document = hd.seg.segread(str(path))
    by_name = {canonical(name): values[0] for name, values in (labels.labels.items() if labels else [])}
    numbers = list(document.segment_numbers)
    lookup = np.zeros(max(numbers, default=0) + 1, dtype=np.int32)
    for number in numbers:
        label = document.get_segment_description(number).segment_label
        lookup[number] = by_name.get(canonical(label), number)
    try:
        volume = document.get_volume(combine_segments=True, skip_overlap_checks=True)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: the DICOM-SEG is not a regular 3D volume ({e})") from None
    affine = np.asarray(volume.affine, dtype=np.float64)
    columns = affine[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)  # per array axis (slice, row, column)
    array = lookup[np.asarray(volume.array).astype(np.int64)]
    image = sitk.GetImageFromArray(array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8))
    # SimpleITK's index (x, y, z) is the array's (column, row, slice)
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (columns / spacing)[:, ::-1].ravel()])
    return image


def read_label_image(path: Path | str, labels: LabelSet | None = None) -> Image:
    """A label image through the shared reader (:func:`stunet.io.reader.read_image`: 2D or 3D, at most
    DEFAULT_MAX_VOXELS voxels, a plausible spacing), or a DICOM-SEG."""
    path = Path(path)
    split = split_name(path)
    if split and split[1] in DICOM_ENDINGS:
        return Image.from_sitk(_read_dicom_seg(path, labels))
    return read_image(path, DEFAULT_MAX_VOXELS, dimensions=(2, 3))


def _same_grid(a: Image, b: Image, tolerance: float = 1e-3) -> bool:
    """Same size, spacing (to 0.1 %), direction (to 1e-3) and origin (to 5 % of a voxel): rounding in headers aside,
    the same voxels."""
    if a.array.shape != b.array.shape:
        return False
    spacing_a, spacing_b = np.array(a.spacing), np.array(b.spacing)
    return (np.allclose(spacing_a, spacing_b, rtol=tolerance, atol=0)
            and np.allclose(a.origin, b.origin, rtol=0, atol=0.05 * float(spacing_a.min()))
            and np.allclose(a.direction, b.direction, rtol=0, atol=tolerance))


def _describe(image: Image) -> str:
    return (f"size {tuple(reversed(image.array.shape))}, spacing {tuple(round(s, 4) for s in image.spacing)}, origin "
            f"{tuple(round(o, 2) for o in image.origin)}")


def read_pair(case: str, ref_path: Path, pred_path: Path, labels: LabelSet | None = None
              ) -> tuple[LabelImage, LabelImage]:
    """Both label images on the reference's grid. The prediction must lie on the same grid (nnU-Net's outputs and
    stunet-predict's do); one stored in another axis order or direction (a DICOM-SEG against a NIfTI) is reoriented
    to the reference's, voxel for voxel, and anything else is refused."""
    ref, pred = read_label_image(ref_path, labels), read_label_image(pred_path, labels)
    if ref.array.ndim != pred.array.ndim:
        raise ValueError(f"case {case}: reference is {ref.array.ndim}D, prediction {pred.array.ndim}D")
    if not _same_grid(ref, pred) and ref.array.ndim == 3:
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ref.direction)
        reoriented = Image.from_sitk(sitk.DICOMOrient(pred.to_sitk(), orientation))
        if _same_grid(ref, reoriented):
            pred = reoriented
    if not _same_grid(ref, pred):
        raise ValueError(f"case {case}: the prediction ({pred_path.name}: {_describe(pred)}) is not on the "
                         f"reference's grid ({ref_path.name}: {_describe(ref)}); resample it to the reference first")
    return LabelImage(_integers(ref.array, ref_path), ref), LabelImage(_integers(pred.array, pred_path), pred)


def default_name(value: int) -> str:
    """The name of a label that no label file names."""
    return f"label_{value}"
