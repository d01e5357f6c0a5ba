"""RT Structure Set output: the references and ROIs read back with pydicom, contours in their slices' planes, the label
map rasterised back from the written patient coordinates (by a rasteriser of this file: each contour filled with
skimage.draw.polygon, the contours of one ROI on a slice combined by even-odd), the checks before the network, and
``stunet-predict --output-type nifti,dicom_seg,dicom_rtstruct``."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicom_helpers import write_series
from predict_helpers import LABELS, make_model_folder, predict
from stunet.clinical.dicom import read_dicom
from stunet.clinical.preview import colour
from stunet.clinical.rtstruct import Algorithm, check_source_for_rtstruct, write_rtstruct
from stunet.errors import CaseError
from stunet.prediction.segmenter import Segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator_examples"
NAMES = {v: k for k, v in LABELS.items()}
ALGORITHM = Algorithm("9.9.9", "STU-Net-S test model", ("ab" * 32,))
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "oblique": ((np.cos(0.4), np.sin(0.4), 0), (-np.sin(0.4) * np.cos(0.3), np.cos(0.4) * np.cos(0.3), np.sin(0.3))),
}


def generated_labels(shape=(10, 64, 72)) -> np.ndarray:
    """Holes (with an island in one), several components, thin and diagonal structures, structures touching at a
    corner, one at the image's edge, and label 4 absent."""
    seg = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    ellipsoid = ((zz - 4.5) / 4.2) ** 2 + ((yy - 30) / 22) ** 2 + ((xx - 30) / 20) ** 2
    seg[ellipsoid < 1] = 1                                         # an organ ...
    seg[(((yy - 30) / 7) ** 2 + ((xx - 28) / 6) ** 2 < 1) & (zz > 1) & (zz < 8)] = 0  # ... with a hole through it
    seg[2:7, 29:32, 27:30] = 1                                     # ... and an island in the hole
    seg[1:9, 8:20, 56:68] = 2                                      # two components on every slice
    seg[1:9, 40:60, 58:66] = 2
    seg[:, 62:64, :] = 2                                           # at the image's edge
    seg[:, 5, 2:50] = 3                                            # a line one pixel wide
    for i in range(30):                                            # a diagonal one: pixels touching at corners,
        seg[:, 20 + i, 2 + i] = 3                                  # cutting through the organ
    seg[3:6, 50, 40] = 3                                           # single pixels
    return seg


def series_of(folder: Path, shape, orientation="axial", pixel_spacing=(0.8, 0.9), **kwargs):
    row_dir, col_dir = ORIENTATIONS[orientation]
    write_series(folder, np.zeros(shape, np.int16), origin=(-40, 25, 100), row_dir=row_dir, col_dir=col_dir,
                 pixel_spacing=pixel_spacing, **kwargs)
    return read_dicom(folder)


def rasterise(path: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """ROI name -> its mask on the grid of ``files`` (slice order), from the written patient coordinates: each point
    projected onto its referenced slice's row and column axes, each contour filled, XOR per slice."""
    from skimage.draw import polygon

    slices = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(slices)}
    shape = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    ds = pydicom.dcmread(str(path))
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    masks = {}
    for outline in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for contour in outline.ContourSequence:
            k = index[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            plane = slices[k]
            origin = np.array(plane.ImagePositionPatient, float)
            row_dir, col_dir = np.array(plane.ImageOrientationPatient[:3], float), \
                np.array(plane.ImageOrientationPatient[3:], float)
            points = np.array(contour.ContourData, float).reshape(-1, 3) - origin
            columns = points @ row_dir / float(plane.PixelSpacing[1])
            rows = points @ col_dir / float(plane.PixelSpacing[0])
            filled = np.zeros(shape[1:], bool)
            filled[polygon(rows, columns, shape[1:])] = True
            mask[k] ^= filled
        masks[names[outline.ReferencedROINumber]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def assert_round_trip(path: Path, seg: np.ndarray, files: list[Path], names: dict[int, str], voxel_mm3: float):
    """Dice >= 0.95 for every structure over 1 cm³; every structure present has an ROI, no other has one. Returns
    the Dice per label."""
    masks = rasterise(path, files)
    present = {int(i) for i in np.unique(seg) if i}
    assert set(masks) == {names[i] for i in present}
    scores = {i: dice(masks[names[i]], seg == i) for i in present}
    for label, score in scores.items():
        if (seg == label).sum() * voxel_mm3 > 1000:
            assert score >= 0.95, (names[label], score)
    return scores


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_structure_set_references_rois_and_contours(orientation, tmp_path):
    seg = generated_labels()
    series = series_of(tmp_path / "series", seg.shape, orientation)
    path = tmp_path / "case.rtstruct.dcm"
    write_rtstruct(path, seg, series.files, NAMES, ALGORITHM)
    ds = pydicom.dcmread(str(path))
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series.files]
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID and ds.PatientID == sources[0].PatientID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == sources[0].StudyInstanceUID
    referenced = study.RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in referenced.ContourImageSequence] == \
        [(s.SOPClassUID, s.SOPInstanceUID) for s in sources]
    # the algorithm: stunet's version, the model, the checkpoint's SHA-256
    for text in (ds.StructureSetDescription, ds.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[
            0].AlgorithmParameters):
        assert "9.9.9" in text and "STU-Net-S test model" in text and "ab" * 32 in text
    # one ROI per label present (label 4 is absent): number, name, colour, type, algorithm
    assert [r.ROINumber for r in ds.StructureSetROISequence] == [1, 2, 3]
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "spleen", "kidney_left"]
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" and r.ReferencedFrameOfReferenceUID ==
               sources[0].FrameOfReferenceUID for r in ds.StructureSetROISequence)
    assert [(o.ReferencedROINumber, tuple(o.ROIDisplayColor)) for o in ds.ROIContourSequence] == \
        [(i, colour(i)) for i in (1, 2, 3)]
    assert [(o.ReferencedROINumber, o.RTROIInterpretedType) for o in ds.RTROIObservationsSequence] == \
        [(i, "ORGAN") for i in (1, 2, 3)]
    # contours: closed planar, in their referenced slice's plane
    by_uid = {s.SOPInstanceUID: s for s in sources}
    for outline in ds.ROIContourSequence:
        assert len(outline.ContourSequence) > 0
        for contour in outline.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints >= 3
            plane = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.array(plane.ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            assert np.abs((points - np.array(plane.ImagePositionPatient, float)) @ normal).max() < 2e-3
    # the organ with its hole and island: three contours on a middle slice (outer, hole, island)
    middle = by_uid[sources[4].SOPInstanceUID].SOPInstanceUID
    assert sum(c.ContourImageSequence[0].ReferencedSOPInstanceUID == middle
               for c in ds.ROIContourSequence[0].ContourSequence) == 3
    # rasterised back: the label map itself
    scores = assert_round_trip(path, seg, series.files, NAMES, 0.8 * 0.9 * 2.5)
    assert min(scores.values()) == 1.0, scores


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/totalsegmentator_examples absent (the real CT)")
def test_real_ct_and_its_segmentation_round_trip(tmp_path):
    image = sitk.ReadImage(str(SHARED / "example_ct_sm.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED / "example_seg.nii.gz"))).astype(np.uint8)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    write_series(tmp_path / "ct", sitk.GetArrayFromImage(image).astype(np.int16), origin=image.GetOrigin(),
                 row_dir=direction[:, 0], col_dir=direction[:, 1], pixel_spacing=image.GetSpacing()[1::-1],
                 slice_step=direction[:, 2] * image.GetSpacing()[2])
    series = read_dicom(tmp_path / "ct")
    assert np.allclose(series.image.GetOrigin(), image.GetOrigin(), atol=1e-3)
    names = {int(i): f"structure_{int(i)}" for i in np.unique(seg)}
    write_rtstruct(tmp_path / "ct.rtstruct.dcm", seg, series.files, names, ALGORITHM)
    voxel = float(np.prod(image.GetSpacing()))
    scores = assert_round_trip(tmp_path / "ct.rtstruct.dcm", seg, series.files, names, voxel)
    assert len(scores) == len(np.unique(seg)) - 1 > 30
    assert min(scores.values()) >= 0.95, scores


def _blank(keyword):
    return lambda k, ds: setattr(ds, keyword, "")


def _other_series_first(k, ds):
    if k == 0:
        ds.SeriesInstanceUID = "1.2.3"


def test_refused_before_anything_is_written(tmp_path):
    seg = generated_labels((4, 64, 72))
    cases = {"StudyInstanceUID (0020,000D)": _blank("StudyInstanceUID"),
             "FrameOfReferenceUID (0020,0052)": lambda k, ds: delattr(ds, "FrameOfReferenceUID"),
             "SeriesInstanceUID (0020,000E)": _other_series_first}
    for number, (tag, edit) in enumerate(cases.items()):
        files = sorted(write_series(tmp_path / f"s{number}", np.zeros(seg.shape, np.int16), edit=edit))
        with pytest.raises(CaseError, match=rf"s{number}/im000\d.dcm: {re.escape(tag)}") as error:
            check_source_for_rtstruct(files)
        assert "\n" not in str(error.value) and "RT Structure Set" in str(error.value)
        with pytest.raises(CaseError):
            write_rtstruct(tmp_path / f"s{number}.dcm", seg, files, NAMES, ALGORITHM)
        assert not (tmp_path / f"s{number}.dcm").exists()
    files = sorted(write_series(tmp_path / "geometry", np.zeros(seg.shape, np.int16),
                                edit=lambda k, ds: setattr(ds, "ImagePositionPatient", ["1", "2"]) if k == 2 else 0))
    with pytest.raises(CaseError, match=r"im0002.dcm: ImagePositionPatient \(0020,0032\) .* not 3 finite"):
        check_source_for_rtstruct(files)
    with pytest.raises(ValueError, match="no labelled voxels"):
        write_rtstruct(tmp_path / "empty.dcm", np.zeros_like(seg), sorted(write_series(
            tmp_path / "ok", np.zeros(seg.shape, np.int16))), NAMES, ALGORITHM)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"))


def test_the_check_runs_before_the_network(model, tmp_path, monkeypatch):
    segmenter = Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    write_series(tmp_path / "no_frame", np.zeros((8, 24, 20), np.int16),
                 edit=lambda k, ds: delattr(ds, "FrameOfReferenceUID"))

    def network(*args, **kwargs):
        raise AssertionError("the network ran before the RT Structure Set check")

    monkeypatch.setattr(segmenter, "segment_preprocessed", network)
    with pytest.raises(CaseError, match=r"no_frame/im0000.dcm: FrameOfReferenceUID \(0020,0052\)"):
        segmenter.predict(tmp_path / "no_frame", for_rtstruct=True)


def test_stunet_predict_writes_nifti_seg_and_rtstruct(model, tmp_path):
    pytest.importorskip("highdicom")
    from stunet.clinical.dicom_seg import read_dicom_seg

    rng = np.random.default_rng(7)
    volume = (rng.normal(0, 200, (12, 28, 30)) - 300).astype(np.int16)
    volume[3:9, 6:20, 8:24] += 900
    write_series(tmp_path / "in" / "patient1", volume, origin=(-40, 25, 100), row_dir=ORIENTATIONS["oblique"][0],
                 col_dir=ORIENTATIONS["oblique"][1], pixel_spacing=(1.6, 1.4), file_order=list(range(12))[::-1])
    out = tmp_path / "out"
    done = predict("-i", tmp_path / "in", "-o", out, "-m", model, "--disable-tta",
                   "--output-type", "nifti,dicom_seg,dicom_rtstruct")
    assert done.returncode == 0 and "1 predicted" in done.stderr, done.stderr
    series = read_dicom(tmp_path / "in" / "patient1")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "patient1.nii.gz")))
    np.testing.assert_array_equal(read_dicom_seg(out / "patient1.seg.dcm", series.files, NAMES), labels)
    ds = pydicom.dcmread(str(out / "patient1.rtstruct.dcm"))
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == \
        pydicom.dcmread(str(series.files[0])).FrameOfReferenceUID
    assert hashlib.sha256((model / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest() in \
        ds.StructureSetDescription
    scores = assert_round_trip(out / "patient1.rtstruct.dcm", labels, series.files, NAMES, 1.6 * 1.4 * 2.5)
    assert scores and min(scores.values()) == 1.0, scores
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "patient1.nii.gz", "patient1.rtstruct.dcm",
                                                     "patient1.seg.dcm", "provenance.json"]
    # the structure set alone, from Python: it marks the case done; an unknown type is a usage error
    segmenter = Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    run = segmenter.predict_folder(tmp_path / "in", tmp_path / "rt", output_type="dicom_rtstruct", progress=False)
    assert run.predicted == ["patient1"] and sorted(p.name for p in (tmp_path / "rt").iterdir()) == \
        ["labels.json", "patient1.rtstruct.dcm", "provenance.json"]
    assert segmenter.predict_folder(tmp_path / "in", tmp_path / "rt", output_type="dicom_rtstruct",
                                    progress=False).skipped == ["patient1"]
    done = predict("-i", tmp_path / "in", "-o", tmp_path / "bad", "-m", model, "--output-type", "nifti,rtstruct",
                   check=False)
    assert done.returncode == 2 and "'rtstruct' is none of nifti, dicom_seg, dicom_rtstruct" in done.stderr


def test_output_types_combine_and_need_dicom_input(tmp_path):
    from stunet.prediction.folder import ArgumentConflict, check_folder, output_types
    assert output_types("both") == {"nifti", "dicom_seg"}
    assert output_types("nifti, dicom_rtstruct") == {"nifti", "dicom_rtstruct"}
    assert output_types("both,dicom_rtstruct") == {"nifti", "dicom_seg", "dicom_rtstruct"}
    with pytest.raises(ArgumentConflict, match="'rtss' is none of"):
        output_types("nifti,rtss")
    (tmp_path / "in").mkdir()
    sitk.WriteImage(sitk.Image(8, 8, 4, sitk.sitkInt16), str(tmp_path / "in" / "ct_0000.nii.gz"))
    with pytest.raises(ArgumentConflict, match="--output-type dicom_rtstruct needs DICOM input"):
        check_folder(tmp_path / "in", tmp_path / "out", "dicom_rtstruct")
