"""stunet-evaluate and stunet-report (issue 26): the metrics against their references, the cohort evaluation, its
files and report page, and the predictions' report.

References: DeepMind's ``surface-distance`` (the implementation FLARE's evaluation uses; the ``test`` extra) for the
surface metrics, nnU-Net's ``compute_metrics`` (``nnunetv2.evaluation.evaluate_predictions``) for Dice and IoU, and
known answers on generated shapes (boxes and balls shifted by k voxels, on anisotropic grids). surface-distance 0.1
fails on empty masks under numpy 2 (np.Inf), so it is only called with two non-empty masks here.
"""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from stunet.evaluation import metrics as M
from stunet.evaluation import surface as S
from stunet.evaluation.evaluate import evaluate
from stunet.evaluation.pairing import pair_cases

ALL = list(M.METRICS)
# surface-distance 0.1 reaches scipy.ndimage through its deprecated filters/morphology namespaces
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance.*")


def ball(shape, centre, radius_mm, spacing):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= radius_mm ** 2


def box(shape, start, size):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + n) for a, n in zip(start, size))] = True
    return mask


def write(path: Path, array: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing_zyx)])
    sitk.WriteImage(image, str(path))
    return path


def deepmind():
    return pytest.importorskip("surface_distance", reason="DeepMind's surface-distance (pip install \"stunet[test]\") "
                                                          "is the reference for the surface metrics")


def reference_values(sd, a, b, spacing, tolerance=1.0) -> dict:
    d = sd.compute_surface_distances(a, b, spacing)
    return {"nsd": sd.compute_surface_dice_at_tolerance(d, tolerance),
            "hd95": sd.compute_robust_hausdorff(d, 95), "hd": sd.compute_robust_hausdorff(d, 100),
            "assd": float(np.mean(sd.compute_average_surface_distance(d))),
            "dice": sd.compute_dice_coefficient(a, b)}


def assert_agree(ours: dict, theirs: dict):
    assert ours["nsd"] == pytest.approx(theirs["nsd"], abs=1e-3)
    for m in ("hd95", "hd", "assd"):
        assert ours[m] == pytest.approx(theirs[m], rel=0.01, abs=1e-9), m
    assert ours["dice"] == pytest.approx(theirs["dice"], abs=1e-12)


# -- point 2: definitions --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 3.1), (2.5, 0.8, 0.8), (5.0, 0.3, 1.7)])
def test_the_surface_table_is_surface_distances(spacing):
    """All 256 cell configurations have surface-distance's surfel area (its table: Lorensen's marching cubes of the
    minority side), at anisotropic spacings too; in 2D its 16 contour lengths."""
    sd = deepmind()
    from surface_distance import lookup_tables
    ours = S.area_table(spacing)
    theirs = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    # the bit of corner (a, b, c) is 4a + 2b + c here; surface-distance's kernel gives it 2 ** (7 - (4a + 2b + c))
    reorder = [sum(((code >> bit) & 1) << (7 - bit) for bit in range(8)) for code in range(256)]
    np.testing.assert_allclose(ours, theirs[reorder], rtol=1e-12, atol=1e-12)
    ours2d = S.area_table(spacing[:2])
    theirs2d = lookup_tables.create_table_neighbour_code_to_contour_length(spacing[:2])
    np.testing.assert_allclose(ours2d, theirs2d[[sum(((c >> b) & 1) << (3 - b) for b in range(4)) for c in range(16)]])
    assert sd  # used


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8), (0.9, 1.7, 0.6)])
@pytest.mark.parametrize("shift", [0, 1, 3])
def test_balls_shifted_by_k_voxels_agree_with_surface_distance(spacing, shift):
    sd = deepmind()
    shape = (40, 44, 48)
    a = ball(shape, (20, 22, 24), 11.0, spacing)
    b = ball(shape, (20 + shift, 22, 24 - shift), 10.0, spacing)
    ours = M.compare_masks(a, b, spacing, ALL, tolerance_mm=1.0)
    assert_agree(ours, reference_values(sd, a, b, spacing, 1.0))
    for tolerance in (0.5, 2.0, 4.0):
        d = sd.compute_surface_distances(a, b, spacing)
        assert M.compare_masks(a, b, spacing, ["nsd"], tolerance)["nsd"] == pytest.approx(
            sd.compute_surface_dice_at_tolerance(d, tolerance), abs=1e-3)


def test_irregular_shapes_agree_with_surface_distance():
    """Noisy, several-component masks (surface points far from each other), anisotropic."""
    sd = deepmind()
    rng = np.random.default_rng(7)
    spacing = (3.0, 0.75, 0.9)
    shape = (24, 50, 46)
    a = ball(shape, (12, 25, 23), 14.0, spacing) & (rng.random(shape) > 0.15)
    b = ball(shape, (13, 24, 22), 12.0, spacing) | (rng.random(shape) > 0.999)
    assert_agree(M.compare_masks(a, b, spacing, ALL, 2.0), reference_values(sd, a, b, spacing, 2.0))


def test_two_d_masks_agree_with_surface_distance():
    sd = deepmind()
    spacing = (0.8, 1.9)
    a, b = ball((60, 40), (30, 20), 20.0, spacing), ball((60, 40), (33, 21), 17.0, spacing)
    assert_agree(M.compare_masks(a, b, spacing, ALL, 1.5), reference_values(sd, a, b, spacing, 1.5))


@pytest.mark.parametrize("shift", [1, 2, 4])
def test_known_answers_of_a_box_shifted_along_one_axis(shift):
    """A 10×8×6 box moved k voxels along axis 0 (3 mm per voxel): Dice 1 - k/10, IoU (10-k)/(10+k), Hausdorff
    distance k × 3 mm, NSD 1 at a tolerance of k × 3 mm and below 1 under it; volumes exact."""
    spacing = (3.0, 0.5, 0.7)
    shape = (24, 14, 12)
    a, b = box(shape, (4, 3, 3), (10, 8, 6)), box(shape, (4 + shift, 3, 3), (10, 8, 6))
    out = M.compare_masks(a, b, spacing, ALL, tolerance_mm=3.0 * shift)
    assert out["dice"] == pytest.approx(1 - shift / 10)
    assert out["iou"] == pytest.approx((10 - shift) / (10 + shift))
    assert out["hd"] == pytest.approx(3.0 * shift)
    assert out["nsd"] == pytest.approx(1.0)
    assert M.compare_masks(a, b, spacing, ["nsd"], 3.0 * shift - 0.01)["nsd"] < 1
    assert out["volume_ref_ml"] == out["volume_pred_ml"] == pytest.approx(480 * 3.0 * 0.5 * 0.7 / 1000)
    assert out["fp_volume_ml"] == out["fn_volume_ml"] == 0


def test_empty_masks_follow_flares_convention():
    spacing = (1.0, 1.0, 1.0)
    empty, full = np.zeros((8, 8, 8), bool), box((8, 8, 8), (2, 2, 2), (3, 3, 3))
    both = M.compare_masks(empty, empty, spacing, ALL)
    assert (both["dice"], both["iou"], both["nsd"]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(both[m]) for m in ("hd95", "hd", "assd"))
    for ref, pred in ((empty, full), (full, empty)):
        one = M.compare_masks(ref, pred, spacing, ALL)
        assert (one["dice"], one["iou"], one["nsd"]) == (0.0, 0.0, 0.0)
        assert all(math.isnan(one[m]) for m in ("hd95", "hd", "assd"))
        assert one["fp_volume_ml"] == pytest.approx(0.027 if ref is empty else 0.0)
        assert one["fn_volume_ml"] == pytest.approx(0.027 if pred is empty else 0.0)


def test_false_positive_and_negative_volumes_use_18_connected_components():
    """autoPET: predicted components that overlap no reference voxel (and reference components no predicted voxel
    overlaps). A blob joined by an edge is part of its neighbour's component (18-connectivity), one touching only by a
    corner is not."""
    shape = (12, 12, 12)
    ref = box(shape, (1, 1, 1), (3, 3, 3))
    pred = box(shape, (1, 1, 1), (3, 3, 3))
    pred |= box(shape, (4, 4, 1), (2, 2, 1))  # shares an edge with the first box: joined, not a false positive
    pred |= box(shape, (6, 6, 2), (1, 1, 1))  # touches that only at a corner: its own component
    pred |= box(shape, (9, 1, 9), (2, 2, 2))  # far away
    ref |= box(shape, (9, 9, 9), (2, 2, 2))  # missed
    out = M.compare_masks(ref, pred, (2.0, 1.0, 1.0), ["fp_volume", "fn_volume"])
    assert out["fp_volume_ml"] == pytest.approx((1 + 8) * 2.0 / 1000)
    assert out["fn_volume_ml"] == pytest.approx(8 * 2.0 / 1000)


def test_dice_and_iou_agree_with_nnunets_compute_metrics(tmp_path):
    """Per case and label, nnU-Net's Dice and IoU (read by its SimpleITKIO) equal ours; where both masks are empty
    nnU-Net gives NaN and we give 1 (FLARE's convention); regions and the ignore label are counted as nnU-Net does."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(3)
    spacing = (2.0, 0.9, 0.9)
    for k in range(3):
        ref = np.zeros((16, 30, 30), np.uint8)
        ref[ball(ref.shape, (8, 15, 15), 9.0, spacing)] = 1
        ref[ball(ref.shape, (8, 10, 10), 4.0, spacing)] = 2
        ref[:, :, :2] = 4  # ignore
        pred = ref.copy()
        pred[pred == 4] = rng.integers(0, 3, size=int((pred == 4).sum()))
        pred[rng.random(pred.shape) > 0.9] = 1
        pred[ball(ref.shape, (8 + k, 20, 20), 3.0, spacing)] = 2
        if k == 2:
            pred[pred == 2] = 0
            ref[ref == 2] = 1
        write(tmp_path / "ref" / f"c{k}.nii.gz", ref, spacing)
        write(tmp_path / "pred" / f"c{k}.nii.gz", pred, spacing)
    labels = {"labels": {"background": 0, "a": 1, "b": 2, "both": [1, 2], "absent": 3, "ignore": 4}}
    rows = evaluate(tmp_path / "ref", tmp_path / "pred", metrics=["dice", "iou"], labels=labels, num_processes=1)
    regions = [1, 2, (1, 2), 3]
    names = ["a", "b", "both", "absent"]
    for k in range(3):
        theirs = compute_metrics(str(tmp_path / "ref" / f"c{k}.nii.gz"), str(tmp_path / "pred" / f"c{k}.nii.gz"),
                                 SimpleITKIO(), regions, ignore_label=4)["metrics"]
        for region, name in zip(regions, names):
            ours = next(r for r in rows if r["case"] == f"c{k}" and r["name"] == name)
            for ours_key, their_key in (("dice", "Dice"), ("iou", "IoU")):
                if math.isnan(theirs[region][their_key]):
                    assert ours[ours_key] == 1.0  # both empty
                else:
                    assert ours[ours_key] == pytest.approx(theirs[region][their_key], abs=1e-12)


def test_cropping_is_exact():
    """A whole label map compared label by label on bounding boxes gives what the full masks give."""
    rng = np.random.default_rng(11)
    spacing = (1.5, 0.8, 1.1)
    shape = (30, 40, 36)
    ref = np.zeros(shape, np.uint8)
    for label in range(1, 9):
        centre = rng.integers(6, np.array(shape) - 6)
        ref[ball(shape, centre, rng.uniform(3, 9), spacing)] = label
    pred = np.roll(ref, 1, axis=1)
    pred[rng.random(shape) > 0.998] = 5  # scattered voxels: a box as large as the image
    from stunet.evaluation.evaluate import _case_jobs, _job
    from stunet.evaluation.pairing import LabelSet, label_boxes
    labels = LabelSet({f"l{v}": (v,) for v in range(1, 9)})
    jobs = list(_case_jobs("c", ref, pred, label_boxes(ref, "ref"), label_boxes(pred, "pred"), spacing, labels, ALL,
                           M.Tolerances(1.0)))
    assert {j[1] for j in jobs} == set(labels.labels)
    for job in jobs:
        _, name, ours, _, _ = _job(*job)
        value = labels.labels[name][0]
        full = M.compare_masks(ref == value, pred == value, spacing, ALL, 1.0)
        for m in ALL:
            assert ours[m] == pytest.approx(full[m], abs=1e-12, nan_ok=True), (name, m)


def test_metric_names_stems_suites_and_tolerances():
    assert M.parse_metrics(None) == ["dice", "nsd", "hd95", "assd", "volume_ref_ml", "volume_pred_ml"]
    assert M.parse_metrics(["volume", "fp_volume", "IoU"]) == ["iou", "volume_ref_ml", "volume_pred_ml",
                                                               "fp_volume_ml"]
    assert M.parse_metrics(None, "flare") == ["dice", "nsd"]
    assert M.parse_metrics(None, "kipa") == ["dice", "hd", "assd"]
    assert M.parse_metrics(None, "autopet") == ["dice", "fp_volume_ml", "fn_volume_ml"]
    assert M.parse_metrics(["hd95"], "flare") == ["dice", "nsd", "hd95"]
    with pytest.raises(ValueError, match="unknown metric 'dise'"):
        M.parse_metrics(["dise"])
    with pytest.raises(ValueError, match="unknown suite"):
        M.parse_metrics(None, "brats")
    t = M.parse_tolerances(["2", "liver=3.5"])
    assert (t.of("spleen"), t.of("liver")) == (2.0, 3.5)
    assert M.parse_tolerances(None).default == 1.0 == M.DEFAULT_NSD_TOLERANCE_MM
    with pytest.raises(ValueError, match="not a number"):
        M.parse_tolerances(["liver=x"])


# -- point 1: the cohort evaluation and its files ----------------------------------------------------------------------
def cross_validation_folder(root: Path, pred: Path, cases: int = 4) -> Path:
    """A trainer folder holding the predictions as nnU-Net's validation of two folds (case k in fold k % 2)."""
    trainer = root / "Trainer__Plans__3d_fullres"
    for k in range(cases):
        target = trainer / f"fold_{k % 2}" / "validation" / f"case{k}.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pred / f"case{k}.nii.gz", target)
    return trainer


def make_cohort(root: Path, cases=3, spacing=(2.0, 0.8, 0.8)) -> tuple[Path, Path]:
    for k in range(cases):
        ref = np.zeros((20, 40, 40), np.uint8)
        ref[ball(ref.shape, (10, 20, 20), 10.0, spacing)] = 1
        ref[ball(ref.shape, (6, 10, 10), 4.0, spacing)] = 2
        pred = np.zeros_like(ref)
        pred[ball(ref.shape, (10, 20 + k, 20), 9.0, spacing)] = 1
        if k != 1:
            pred[ball(ref.shape, (6, 10, 10 + k), 4.0, spacing)] = 2
        write(root / "labelsTr" / f"case{k}.nii.gz", ref, spacing)
        write(root / "pred" / f"case{k}.nii.gz", pred, spacing)
    (root / "pred" / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    return root / "labelsTr", root / "pred"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_the_table_the_summary_and_the_report(tmp_path):
    ref, pred = make_cohort(tmp_path)
    rows = evaluate(ref, pred, tmp_path / "out", metrics=ALL, nsd_tolerance=[1, "spleen=2"], num_processes=1)
    table = read_csv(tmp_path / "out" / "metrics.csv")
    assert list(table[0]) == ["case", "label", "name", *ALL]
    assert [(r["case"], r["label"], r["name"]) for r in table] == [
        (f"case{k}", str(v), n) for k in range(3) for v, n in ((1, "liver"), (2, "spleen"))]
    missed = next(r for r in table if r["case"] == "case1" and r["name"] == "spleen")
    assert (missed["dice"], missed["nsd"], missed["hd95"], missed["assd"]) == ("0.0", "0.0", "", "")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["labels_from"].endswith("labels.json")
    assert summary["nsd_tolerance_mm"] == {"default": 1.0, "per_label": {"spleen": 2.0}}
    spleen = summary["per_label"]["spleen"]
    assert spleen["empty"] == {"reference": [], "prediction": ["case1"], "both": []}
    assert spleen["hd95"]["count"] == 2 and spleen["dice"]["count"] == 3
    dice = [r["dice"] for r in rows if r["name"] == "spleen"]
    assert spleen["dice"]["mean"] == pytest.approx(np.mean(dice))
    assert spleen["dice"]["median"] == pytest.approx(np.median(dice))
    assert spleen["dice"]["std"] == pytest.approx(np.std(dice))
    assert summary["over_labels"]["dice"]["mean"] == pytest.approx(
        np.mean([summary["per_label"][n]["dice"]["mean"] for n in ("liver", "spleen")]))
    # the per-label tolerance is the one used
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case0.nii.gz"))) == 2
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case0.nii.gz"))) == 2
    spacing = tuple(reversed(sitk.ReadImage(str(ref / "case0.nii.gz")).GetSpacing()))
    assert float(table[1]["nsd"]) == pytest.approx(M.compare_masks(a, b, spacing, ["nsd"], 2.0)["nsd"])
    assert (tmp_path / "out" / "report.html").is_file()


def test_parallel_equals_serial_and_cross_validation_folders_pair(tmp_path):
    """-np 2 gives the serial table; a trainer folder's fold_*/validation are read together, with its dataset.json."""
    ref, pred = make_cohort(tmp_path, cases=4)
    trainer = cross_validation_folder(tmp_path, pred)
    (trainer / "fold_0" / "validation" / "summary.json").write_text("{}")
    (trainer / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    serial = evaluate(ref, pred, metrics=["dice", "hd95", "fp_volume"], num_processes=1)
    parallel = evaluate(ref, trainer, metrics=["dice", "hd95", "fp_volume"], num_processes=2)
    assert len(serial) == 8
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_pairing_names_missing_and_unmatched_cases(tmp_path):
    ref, pred = make_cohort(tmp_path, cases=3)
    (pred / "case2.nii.gz").rename(pred / "other.nii.gz")
    pairs = pair_cases(ref, pred)
    assert [c for c, _, _ in pairs.cases] == ["case0", "case1"]
    assert pairs.missing == ["case2"] and pairs.unmatched == ["other"]
    rows = evaluate(ref, pred, tmp_path / "out", metrics=["dice"], num_processes=1)
    assert {r["case"] for r in rows} == {"case0", "case1"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing_predictions"] == ["case2"] and summary["unmatched_predictions"] == ["other"]
    write(tmp_path / "images" / "case0_0000.nii.gz", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="no case names in common"):
        pair_cases(ref, tmp_path / "images")


def test_rt_structure_sets_beside_the_label_maps_are_not_cases(tmp_path):
    """stunet-predict --output-type nifti,dicom_rtstruct writes case.rtstruct.dcm beside case.nii.gz: contours, not a
    label image, so the pairing neither reads it nor lists it as a prediction without a reference."""
    ref, pred = make_cohort(tmp_path, cases=2)
    (pred / "case0.rtstruct.dcm").write_bytes(b"not read")
    pairs = pair_cases(ref, pred)
    assert [c for c, _, _ in pairs.cases] == ["case0", "case1"] and pairs.unmatched == []


def test_other_endings_and_labels_found_in_the_images(tmp_path):
    """.nrrd / .mha are read like .nii.gz; without any label file every label found is evaluated as label_N, and a
    label absent from a case counts as empty in both there."""
    spacing = (1.0, 1.0, 1.0)
    a = np.zeros((10, 12, 12), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    b = a.copy()
    b[7:9, 7:9, 7:9] = 3
    write(tmp_path / "r" / "x.nrrd", a, spacing)
    write(tmp_path / "p" / "x.mha", b, spacing)
    write(tmp_path / "r" / "y.nii", a, spacing)
    write(tmp_path / "p" / "y.nii.gz", a, spacing)
    rows = evaluate(tmp_path / "r", tmp_path / "p", metrics=["dice", "fp_volume"], num_processes=1)
    assert [(r["case"], r["name"], r["dice"]) for r in rows] == [
        ("x", "label_1", 1.0), ("x", "label_3", 0.0), ("y", "label_1", 1.0), ("y", "label_3", 1.0)]
    assert rows[1]["fp_volume_ml"] == pytest.approx(0.008)


def test_a_prediction_off_the_reference_grid_is_refused(tmp_path):
    write(tmp_path / "r" / "x.nii.gz", np.ones((4, 5, 6), np.uint8), (1.0, 1.0, 1.0))
    write(tmp_path / "p" / "x.nii.gz", np.ones((4, 5, 6), np.uint8), (2.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="not on the reference's grid"):
        evaluate(tmp_path / "r", tmp_path / "p", metrics=["dice"], num_processes=1)


def test_a_dicom_seg_reference_is_read_on_its_series_grid(tmp_path):
    """A DICOM-SEG reference (as stunet-predict writes them) against a NIfTI prediction of its series: the SEG's
    segments become the labels of the same names, on the series' grid, voxel for voxel."""
    pytest.importorskip("highdicom")
    from dicom_helpers import write_series
    from stunet.clinical.dicom_seg import write_dicom_seg

    volume = np.zeros((6, 16, 20), np.int16)
    files = write_series(tmp_path / "series", volume, origin=(10.0, -5.0, 30.0), pixel_spacing=(0.7, 0.9))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1:4, 3:9, 4:12] = 1
    labels[2:5, 10:14, 12:18] = 2
    (tmp_path / "ref").mkdir()
    write_dicom_seg(tmp_path / "ref" / "case.seg.dcm", labels, files, {0: "background", 1: "liver", 2: "spleen"})
    series = sitk.ImageSeriesReader()
    series.SetFileNames([str(f) for f in files])
    geometry = series.Execute()
    prediction = sitk.GetImageFromArray(labels)
    prediction.CopyInformation(geometry)
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(prediction, str(tmp_path / "pred" / "case.nii.gz"))
    (tmp_path / "pred" / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    rows = evaluate(tmp_path / "ref", tmp_path / "pred", metrics=["dice", "hd", "volume"], num_processes=1)
    assert [(r["name"], r["dice"], r["hd"]) for r in rows] == [("liver", 1.0, 0.0), ("spleen", 1.0, 0.0)]
    assert rows[0]["volume_ref_ml"] == pytest.approx(3 * 6 * 8 * 0.7 * 0.9 * 2.5 / 1000)
    (tmp_path / "slice").mkdir()
    shutil.copy(files[0], tmp_path / "slice" / "case.dcm")  # an image slice, not a SEG
    with pytest.raises(ValueError, match="not a DICOM-SEG"):
        evaluate(tmp_path / "slice", tmp_path / "pred", metrics=["dice"], num_processes=1)


# -- the command lines ---------------------------------------------------------------------------------------------
def test_stunet_evaluate_command(tmp_path, capsys):
    from stunet.cli.evaluate import main
    ref, pred = make_cohort(tmp_path, cases=2)
    main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "out"), "--suite", "kipa", "-np", "1"])
    assert "2 case(s), 4 rows, mean Dice" in capsys.readouterr().out
    assert list(read_csv(tmp_path / "out" / "metrics.csv")[0]) == ["case", "label", "name", "dice", "hd", "assd"]
    main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "flare"), "--suite", "flare", "--no-report",
          "--quiet", "--nsd-tolerance", "liver=3"])
    summary = json.loads((tmp_path / "flare" / "summary.json").read_text())
    assert summary["suite"] == "flare" and summary["nsd_tolerance_mm"]["per_label"] == {"liver": 3.0}
    assert not (tmp_path / "flare" / "report.html").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "x"), "--metrics", "dise"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stunet-evaluate: error: unknown metric 'dise'" in err


# -- point 4: the report pages ---------------------------------------------------------------------------------------
class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.headings, self.links, self._heading = [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])
        self._heading = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._heading and data.strip():
            self.headings.append(data.strip())
            self._heading = False


def parse_page(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


def add_quality(pred: Path, flagged_case="case0"):
    for case in ("case0", "case1"):
        stats = {name: {"label": value, "voxels": 100, "volume_ml": 1.0, "confidence": 0.91, "uncertain_fraction": 0.02,
                        "components": 1, "largest_component_fraction": 1.0, "flag": None}
                 for value, name in ((1, "liver"), (2, "spleen"))}
        if case == flagged_case:
            stats["spleen"].update(components=3, largest_component_fraction=0.6, flag=["fragmented"])
        (pred / f"{case}.statistics.json").write_text(json.dumps(stats))


def assert_self_contained(text: str) -> PageParser:
    page = parse_page(text)
    assert not re.search(r"https?://", text), "the page refers to the network"
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(link.startswith(("data:", "#")) for link in page.links)
    return page


def test_the_evaluation_report_is_self_contained_with_tables_plots_worst_cases_and_flags(tmp_path):
    ref, pred = make_cohort(tmp_path)
    add_quality(pred)
    evaluate(ref, pred, tmp_path / "out", metrics=["dice", "nsd", "hd95"], num_processes=1)
    text = (tmp_path / "out" / "report.html").read_text()
    page = assert_self_contained(text)
    assert page.tags.count("table") >= 4
    # the metrics' distributions side by side (no volume metric: no volume plot), and the worst cases drawn
    assert text.count('<img class="plot"') == 1 and len(page.images) > 1
    import base64
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"Per label", "Distributions", "Worst cases per label", "Empty masks", "Quality flags"} <= set(page.headings)
    assert "fragmented" in text and "1 of 4 case-label pairs" in text


def test_stunet_report_for_predictions_without_references(tmp_path, capsys):
    """Statistics from case.statistics.json where present (with its quality flags), computed from the label map
    where not."""
    from stunet.cli.report import main
    _, pred = make_cohort(tmp_path)
    add_quality(pred)
    main([str(pred), "--quiet"])
    assert "wrote" in capsys.readouterr().out
    text = (pred / "report.html").read_text()
    page = assert_self_contained(text)
    assert len(page.images) == 1 and page.tags.count("table") >= 3
    assert "fragmented" in text and "1: case2" in text  # case2 had no statistics file
    from stunet.evaluation.predictions import label_map_statistics
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case2.nii.gz")))
    stats = label_map_statistics(array, (2.0, 0.8, 0.8), {1: "liver", 2: "spleen", 3: "absent"}, slab=3)
    assert stats["liver"]["voxels"] == int((array == 1).sum())
    assert stats["liver"]["volume_ml"] == pytest.approx((array == 1).sum() * 1.28 / 1000)
    assert stats["absent"] == {"label": 3, "voxels": 0, "volume_ml": 0.0, "touches_border": False}
    edge = np.zeros((4, 4, 4), np.uint8)
    edge[0, 1, 1], edge[2, 2, 2] = 1, 2
    assert [v["touches_border"] for v in label_map_statistics(edge, (1, 1, 1)).values()] == [True, False]
    main([str(pred), "-o", str(tmp_path / "elsewhere"), "--quiet"])
    assert (tmp_path / "elsewhere" / "report.html").is_file()


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_the_report_renders_in_headless_chromium(tmp_path):
    """Chromium (Debian's ``chromium``) loads the page from the file alone: its DOM has the tables and the images, and
    the screenshot shows the plots' colours (the cases' blue dots, the medians' red). Skipped where Chromium is not
    installed (CI may lack it)."""
    browser = chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    ref, pred = make_cohort(tmp_path)
    add_quality(pred)
    evaluate(ref, pred, tmp_path / "out", metrics=["dice", "hd95"], num_processes=1)
    page = tmp_path / "out" / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = parse_page(dom.stdout)
    assert rendered.tags.count("table") >= 4 and len(rendered.images) > 1  # the plot and the worst cases drawn
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1000,2400", "--hide-scrollbars",
                          page.as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.is_file(), run.stderr[-2000:]
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))[..., :3].reshape(-1, 3).astype(int)
    bluish = (pixels[:, 2] - pixels[:, 0] > 60) & (pixels[:, 2] > 120)  # the dots, blended with the white
    reddish = (pixels[:, 0] - pixels[:, 2] > 80) & (pixels[:, 0] > 150)  # the medians
    assert bluish.sum() > 50 and reddish.sum() > 20, "no plots on the rendered page"


# -- reference material: a real pair of whole-body segmentations ----------------------------------------------------
def test_a_real_pair_agrees_with_surface_distance(shared):
    """TotalSegmentator's two segmentations of the example CT (117 classes, 3 mm): every label either holds, against
    surface-distance and nnU-Net's Dice."""
    sd = deepmind()
    folder = shared("data/totalsegmentator_examples")
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg.nii.gz")))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "example_seg_fast.nii.gz")))
    spacing = tuple(reversed(sitk.ReadImage(str(folder / "example_seg.nii.gz")).GetSpacing()))
    both = sorted((set(np.unique(ref)) & set(np.unique(pred))) - {0})
    assert len(both) > 30
    for label in both:
        a, b = ref == label, pred == label
        assert_agree(M.compare_masks(a, b, spacing, ALL, 3.0), reference_values(sd, a, b, spacing, 3.0))
