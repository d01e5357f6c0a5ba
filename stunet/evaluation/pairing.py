"""Finding the label images of a reference and a prediction folder, pairing them by case name, reading them onto one
grid, checking that they hold labels, and finding the label names.

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
from scipy import ndimage

from stunet.clinical.dicom_seg import require  # the dicom extra, for DICOM-SEG label images
from stunet.errors import CaseError
from stunet.io.json_file import read_json
from stunet.io.reader import DEFAULT_MAX_VOXELS, Image, read_image
from stunet.labels import IGNORE, canonical, label_values_of
from stunet.paths import split_ending

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".seg.dcm", ".dcm")
DICOM_ENDINGS = (".seg.dcm", ".dcm")
RTSTRUCT_ENDING = ".rtstruct.dcm"  # contours beside stunet-predict's label maps: not a label image
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_LABELS = 10_000  # labels of a label file or present in one label image (TotalSegmentator has 117)
MAX_LABEL_VALUE = 2**31 - 1
SMALL_LABEL_VALUE = 1 << 16  # up to here, tables indexed by label value are small


def split_name(path: Path) -> tuple[str, str] | None:
    """(case name, ending in lower case) of a label image's file name; None for other files and empty case names."""
    split = split_ending(path, ENDINGS)
    return split if split and split[0] else None


def _label_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = split_name(path) if path.is_file() and not path.name.startswith(".") else None
        if split is None or path.name.lower().endswith(RTSTRUCT_ENDING):
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


def case_folds(folder: Path | str) -> dict[str, str]:
    """Case name -> fold (``fold_N``) of predictions laid out as nnU-Net's cross-validation: a trainer folder's
    ``fold_*/validation`` cases, or a ``fold_N/validation`` folder's; empty for other folders."""
    folder = Path(folder)
    if folder.name == "validation" and folder.parent.name.startswith("fold_"):
        return {name: folder.parent.name for name in _label_files(folder)}
    if not folder.is_dir() or _label_files(folder) or (folder / "labelsTr").is_dir():
        return {}
    return {name: validation.parent.name for validation in _folds(folder) for name in _label_files(validation)}


IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def find_images(folder: Path | str) -> dict[str, Path]:
    """Case name -> image of a folder of images (``imagesTr`` as nnU-Net names them, ``case_0000.nii.gz``, the first
    channel; or ``case.nii.gz``), or of a dataset folder's ``imagesTr``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if (folder / "imagesTr").is_dir() and not any(split_ending(p, IMAGE_ENDINGS) for p in folder.iterdir()):
        folder = folder / "imagesTr"
    found: dict[str, Path] = {}
    channels: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = split_ending(path, IMAGE_ENDINGS) if path.is_file() and not path.name.startswith(".") else None
        if not split or not split[0]:
            continue
        stem = split[0]
        if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
            if stem[-4:] == "0000":
                channels[stem[:-5]] = path
        else:
            found[stem] = path
    return {**found, **channels}


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


def _label_name(name, source: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source}: label name {name!r} is not a non-empty text; name every label")
    return name


def _check_values(name: str, values: tuple[int, ...], source: str) -> None:
    if not all(0 <= v <= MAX_LABEL_VALUE for v in values):
        raise ValueError(f"{source}: label {name!r} has value {','.join(map(str, values))}, outside 0 to "
                         f"{MAX_LABEL_VALUE}; label values are whole numbers 0 or more")


def parse_labels(data: dict, source: str = "") -> LabelSet:
    """nnU-Net's dataset.json (``{"labels": {"background": 0, "liver": 1, "tumour": [1, 2], "ignore": 3}}``) or a
    labels.json (``{"0": "background", "1": "liver"}``, as stunet-predict writes), as a :class:`LabelSet`. Refused
    (ValueError, one line naming ``source``): more than MAX_LABELS labels, a value that is not a whole number from 0
    to MAX_LABEL_VALUE (:func:`stunet.labels.label_values_of` for dataset.json), an empty name, and two labels of one
    name or one value."""
    source = source or "labels"
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    entries = data["labels"] if isinstance(data.get("labels"), dict) else data
    if len(entries) > MAX_LABELS:
        raise ValueError(f"{source}: {len(entries):,} labels, more than the {MAX_LABELS:,} a label file may hold")
    labels: dict[str, tuple[int, ...]] = {}
    ignore = None
    if entries is not data:  # dataset.json
        for name, values in label_values_of(data, source).items():
            _check_values(_label_name(name, source), values, source)
            if name == IGNORE:
                ignore = values[0]
            elif values != (0,):
                labels[name] = values
    else:  # labels.json: index -> name
        by_value: dict[int, str] = {}
        names: set[str] = set()
        for index, name in data.items():
            try:
                value = int(index)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: neither a dataset.json (with \"labels\") nor a labels.json (label index "
                                 f"-> name): {index!r} is not a label index") from None
            _check_values(_label_name(name, source), (value,), source)
            if value in by_value:
                raise ValueError(f"{source}: labels {by_value[value]!r} and {name!r} both have index {value}; give "
                                 f"each name its own index")
            if name in names:
                raise ValueError(f"{source}: two labels are named {name!r}; give each label its own name")
            by_value[value] = name
            names.add(name)
            if value != 0:
                labels[name] = (value,)
        labels = dict(sorted(labels.items(), key=lambda kv: kv[1]))
    if not labels:
        raise ValueError(f"{source}: no foreground labels")
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


def label_array(array: np.ndarray, path) -> np.ndarray:
    """``array`` as labels: booleans and non-negative integers as they are, whole-number floats as the smallest
    unsigned integer type that holds them. CaseError naming ``path`` for what is not a label image: NaN or infinite
    values, fractions, negative values, values over MAX_LABEL_VALUE."""
    if array.dtype == bool:
        return array
    rule = "labels are whole numbers from 0"
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all():
            raise CaseError(f"{path}: not a label image (NaN or infinite values); {rule}")
        if not np.array_equal(np.rint(array), array):
            raise CaseError(f"{path}: not a label image (values that are not whole numbers); {rule}")
    low, high = (array.min(), array.max()) if array.size else (0, 0)
    if low < 0:
        raise CaseError(f"{path}: not a label image (negative values, e.g. {low}); {rule}")
    if high > MAX_LABEL_VALUE:
        raise CaseError(f"{path}: not a label image (a value of {high}, over {MAX_LABEL_VALUE}); {rule}")
    if np.issubdtype(array.dtype, np.integer):
        return array
    return array.astype(np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32)


def label_boxes(array: np.ndarray, path, slab: int = 16) -> dict[int, tuple[slice, ...]]:
    """Each label present in ``array`` (:func:`label_array`'s, a value over 0) -> its bounding box. Tables are sized
    by the labels present, not by the largest value: values over SMALL_LABEL_VALUE are numbered in order first (in
    slabs of ``slab`` planes). CaseError naming ``path`` for more than MAX_LABELS labels."""
    if array.dtype == bool:
        array = array.view(np.uint8)
    high = int(array.max()) if array.size else 0
    if high <= SMALL_LABEL_VALUE:
        values, numbered = np.arange(1, high + 1), array
    else:
        values = np.unique(array)
        values = values[values > 0]
        if values.size > MAX_LABELS:
            raise CaseError(f"{path}: {values.size:,} labels, more than the {MAX_LABELS:,} a label image may hold")
        numbered = np.empty(array.shape, np.uint16)
        for start in range(0, max(array.shape[0], 1), slab):
            numbered[start:start + slab] = np.searchsorted(values, array[start:start + slab], side="right")
    boxes = {int(v): box for v, box in zip(values, ndimage.find_objects(numbered)) if box is not None}
    if len(boxes) > MAX_LABELS:
        raise CaseError(f"{path}: {len(boxes):,} labels, more than the {MAX_LABELS:,} a label image may hold")
    return boxes


def _frame_segments(header) -> set[int]:
    """The segment numbers that a DICOM-SEG's frames point at (per frame, or shared by all)."""
    groups = [*getattr(header, "PerFrameFunctionalGroupsSequence", []),
              *getattr(header, "SharedFunctionalGroupsSequence", [])]
    return {int(item.ReferencedSegmentNumber) for group in groups
            for item in getattr(group, "SegmentIdentificationSequence", []) if "ReferencedSegmentNumber" in item}


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
    unknown = sorted(_frame_segments(header) - set(numbers))
    if unknown:
        raise CaseError(f"{path}: frames point at segment {', '.join(map(str, unknown[:5]))}, which the DICOM-SEG "
                        f"does not describe (it describes {', '.join(map(str, numbers[:10])) or 'none'}); fix or "
                        f"re-export the file")
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
    high = array.max(initial=0)
    image = sitk.GetImageFromArray(array.astype(np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32))
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
    return LabelImage(label_array(ref.array, ref_path), ref), LabelImage(label_array(pred.array, pred_path), pred)


def default_name(value: int) -> str:
    """The name of a label that no label file names."""
    return f"label_{value}"
