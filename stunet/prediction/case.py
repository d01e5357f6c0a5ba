"""One case, one path: :func:`predict_case` is what every door into prediction calls (``stunet-predict``,
:class:`~stunet.prediction.segmenter.Segmenter`, a part of a run split over machines, DICOM input), so each check
holds at every door.

A case is image files (one per channel), a DICOM series (a folder, a .zip or a single file), or in-memory images
(SimpleITK, nibabel, or numpy arrays with ``spacing=``/``affine=``). In order:

1. the input is checked before it is read in full: headers against their files, 3D scalar real voxels, spacing
   finite and plausible, the voxel budget as stored and at the model's spacing, with its memory estimate
   (:mod:`.checks`, :mod:`.budget`, the shared reader :mod:`stunet.io.reader`); a DICOM series is checked slice by
   slice (:mod:`stunet.clinical.dicom`);
2. it is read into the plans' reader output: a file's voxels once by the shared reader where the plans' reader is
   nnU-Net's SimpleITK one (the same output), else by the plans' reader; :mod:`.images` for the rest;
3. its values are checked (:func:`.checks.check_values`: no content is refused; isolated NaN/inf voxels are replaced by
   the image's minimum and the replacement is returned as a note);
4. nnU-Net's preprocessing, the blended sliding window and the export onto the input's grid (the engine's
   ``preprocess`` and ``segment_preprocessed``, serialised by its lock).

What to write, and where, is the caller's: the command writes files atomically, the Segmenter returns images.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
import tempfile
import time
from typing import Callable, Sequence
import warnings

import SimpleITK as sitk
import numpy as np

from stunet.clinical.dicom import DicomSeries, extract_zip, read_dicom
from stunet.clinical.dicom_seg import check_source_for_seg
from stunet.clinical.rtstruct import check_source_for_rtstruct
from stunet.clinical.quality import quality
from stunet.errors import CaseError
from stunet.paths import itk_readable
from stunet.prediction.budget import VoxelBudget
from stunet.prediction.checks import check_files, check_sitk_images, check_values, open_files
from stunet.prediction.discovery import Case, has_image_ending, is_dicom_file
from stunet.prediction.export import ConfidenceTally
from stunet.prediction.images import array_to_sitk, files_reader_output, is_nibabel, nibabel_to_sitk, reader_output


@dataclass
class CaseResult:
    """A segmented case: the label map on the input's grid, in nnU-Net's SimpleITK array order (z, y, x), and what
    the caller needs to write it."""
    name: str
    labels: np.ndarray
    properties: dict  # the reader's: the input's geometry, for the plans' writer
    probabilities: np.ndarray | None = None  # float16, one map per output label
    image: np.ndarray | None = None  # the first channel as read (values repaired), with keep_image=True
    series: DicomSeries | None = None
    reference: object = None  # the first in-memory input (its kind and header), else None
    notes: list[str] = field(default_factory=list)  # what was repaired or changed on the way (also warned)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read, preprocess, network, export[, qc]
    tiles: int = 0
    quality: dict[str, dict] | None = None  # with qc=True: per label name (stunet.clinical.quality)
    skipped_tiles: int = 0  # of ``tiles``, those holding no body (stunet.prediction.body): not run


@dataclass
class _Read:
    image: np.ndarray
    properties: dict
    names: list[str]
    series: DicomSeries | None = None
    reference: object = None
    notes: list[str] = field(default_factory=list)
    extracted: bool = False  # a zip's series, extracted into the work folder


def _is_dicom_source(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() == ".zip" or (is_dicom_file(path) and not has_image_ending(path))


def _read_files(engine, files: list[Path], budget: VoxelBudget, workdir: Path) -> _Read:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    if engine.model.plans_manager.image_reader_writer_class is SimpleITKIO:  # each file's voxels read once, here
        image, properties, notes = files_reader_output(open_files(files, budget, workdir))
        return _Read(image, properties, [str(f) for f in files], notes=notes)
    opened = check_files(files, budget, workdir)
    links = [f.link for f in opened]
    try:
        image, properties = engine.read_files(links)
        notes = [note for f in opened if "sitk_stuff" in properties and (note := f.form_note())]
    except Exception as e:  # nnU-Net's readers raise bare errors: name the file that fails alone
        for path, link in zip(files, links):
            try:
                engine.read_files([link])
            except Exception as single:
                raise CaseError(f"{path}: cannot read it ({str(single).strip()[:200] or type(single).__name__})"
                                ) from single
        raise CaseError(f"{files[0]}: cannot read the case ({e})") from e
    finally:
        for f in opened:
            f.close()
    return _Read(image, properties, [str(f) for f in files], notes=notes)


def _read_dicom(engine, source: Path, name: str, series_uid: str | None, workdir: Path,
                budget: VoxelBudget, for_seg: bool = False, for_rtstruct: bool = False) -> _Read:
    folder, extracted = itk_readable(source, workdir), False
    if source.is_file() and source.suffix.lower() == ".zip":
        extracted = True  # extracted for as long as the caller keeps workdir
        folder = extract_zip(folder, workdir)  # refuses a bad zip or a zip bomb in one line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            series = read_dicom(folder, series_uid, name)
            if for_seg:  # everything the DICOM-SEG needs, checked (and repaired where documented) before the network
                check_source_for_seg(series.files)  # (the RT Structure Set's checks and more)
            elif for_rtstruct:
                check_source_for_rtstruct(series.files)
        except CaseError:
            raise
        except Exception as e:  # GDCM's bare errors: name the input
            raise CaseError(f"{source}: cannot read the DICOM series ({str(e).strip()[:200]})") from e
    notes = [str(w.message) for w in caught]
    check_sitk_images([str(source)], [series.image], budget)
    image, properties = reader_output(engine.model, [series.image], engine.read_files)
    return _Read(image, properties, [str(source)], series, notes=notes, extracted=extracted)


def _read_images(engine, items: list, spacing, affine, budget: VoxelBudget) -> _Read:
    names = ["the image"] if len(items) == 1 else [f"image {c} (channel {c})" for c in range(len(items))]
    if isinstance(items[0], np.ndarray):
        images = [array_to_sitk(a, spacing, affine, n) for a, n in zip(items, names)]
    else:
        if spacing is not None or affine is not None:
            raise CaseError("spacing= and affine= are for numpy arrays; images carry their own geometry")
        if isinstance(items[0], sitk.Image):
            images = items
        elif is_nibabel(items[0]):
            images = [nibabel_to_sitk(i, n) for i, n in zip(items, names)]
        else:
            raise TypeError(f"give a SimpleITK or nibabel image, a path, or a numpy array with spacing= or affine=; "
                            f"got {type(items[0]).__name__}")
    check_sitk_images(names, images, budget)
    image, properties = reader_output(engine.model, images, engine.read_files)
    return _Read(image, properties, names, reference=items[0])


def read_case(engine, source, budget: VoxelBudget, *, spacing=None, affine=None, series_uid: str | None = None,
              workdir: Path | None = None, for_seg: bool = False, for_rtstruct: bool = False) -> _Read:
    """Steps 1-3 of the module's list for any kind of ``source``; ``workdir`` holds an extracted zip."""
    if isinstance(source, Case):
        if source.problem:
            raise CaseError(source.problem)
        items = list(source.files)
    else:
        items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise CaseError("no image given")
    channels = engine.model.num_input_channels
    if isinstance(items[0], (str, Path)):
        paths = [Path(p) for p in items]
        for path in paths:
            if not path.exists():
                raise CaseError(f"{path}: no such file or folder")
        if len(paths) == 1 and _is_dicom_source(paths[0]):
            if channels != 1:
                raise CaseError(f"{paths[0]}: the model takes {channels} channels; DICOM input gives one")
            name = source.name if isinstance(source, Case) else paths[0].name.rsplit(".", 1)[0]
            read = _read_dicom(engine, paths[0], name, series_uid, workdir, budget, for_seg, for_rtstruct)
        else:
            if len(paths) != channels:
                raise CaseError(f"{paths[0]}: the model takes {channels} channel file(s); got {len(paths)}")
            read = _read_files(engine, paths, budget, workdir)
    else:
        if len(items) != channels:
            raise CaseError(f"the model takes {channels} channel(s); got {len(items)} image(s) (give a list, one "
                            f"image per channel)")
        read = _read_images(engine, items, spacing, affine, budget)
    read.notes += check_values(read.names, read.image)
    return read


def case_name(source) -> str:
    if isinstance(source, Case):
        return source.name
    first = source[0] if isinstance(source, (list, tuple)) and source else source
    return Path(first).name if isinstance(first, (str, Path)) else "image"


def predict_case(engine, source, *, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                 probabilities: bool = False, keep_image: bool = False, qc: bool = False,
                 series_uid: str | None = None, for_seg: bool = False, for_rtstruct: bool = False,
                 budget: VoxelBudget | None = None, workdir: Path | None = None,
                 progress: Callable[[int], None] | None = None,
                 on_start: Callable[[int], None] | None = None) -> CaseResult:
    """Segment one case (see the module's docstring). ``engine`` is a :class:`~.segmenter.Segmenter`; ``budget``
    defaults to its own (``max_voxels``, with the probability maps counted when asked for); ``workdir`` keeps an
    extracted zip's files for as long as the caller needs them (a DICOM-SEG references them), else they are removed
    when the case is done; ``for_seg`` and ``for_rtstruct`` check a DICOM series for what its DICOM-SEG and its RT
    Structure Set will need before the network runs.
    ``qc`` adds the per-label quality fields (:mod:`stunet.clinical.quality`). Raises
    :class:`~stunet.errors.CaseError` naming the input for anything refused."""
    start = time.perf_counter()
    budget = budget or engine.budget(probabilities)
    own_workdir = workdir is None
    with contextlib.ExitStack() as stack:
        if own_workdir:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stunet-case-")))
        read = read_case(engine, source, budget, spacing=spacing, affine=affine, series_uid=series_uid,
                         workdir=workdir, for_seg=for_seg, for_rtstruct=for_rtstruct)
        first = read.image[0].copy() if keep_image else None  # as read: preprocessing normalises it in place
        read_seconds = time.perf_counter() - start
        image, properties = read.image, read.properties
        read.image = None
        data, properties = engine.preprocess(image, properties)
        del image  # normalised in place: freed before the network runs
        engine.predictor.tally = ConfidenceTally() if qc else None
        try:
            seg, probs = engine.segment_preprocessed(data, properties, probabilities, progress, on_start)
        finally:
            tally, engine.predictor.tally = engine.predictor.tally, None
        del data
    if own_workdir and read.extracted:
        read.series.files = []  # the extracted files are deleted: a zip's series is referenced by no file
    notes = read.notes + engine.predictor.take_fallbacks()
    timings = {"read": read_seconds, **engine.timings}
    checked = None
    if qc:
        qc_start = time.perf_counter()
        members = {label: engine.members[i] for i, label in enumerate(sorted(engine.label_names))}
        intensities = (engine.model.plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
        checked = quality(seg, tally, members, engine.label_names, first, intensities)
        timings["qc"] = time.perf_counter() - qc_start
    return CaseResult(case_name(source), seg, properties, probs, first, read.series, read.reference, notes, timings,
                      engine.predictor.tiles, checked, engine.predictor.skipped_tiles)
