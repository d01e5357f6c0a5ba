"""What the commands and the library say means what it says: the precision in force, one axis order, numbers without
float32 noise, which trainers need pretrained weights, the preview's panel names, plain lines in log files, unknown
label names and unmatched predictions named in one line."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from stunet.nnunet.trainer import STUNetTrainer, precision_in_force


# -- the training log's precision ----------------------------------------------------------------------------------
def test_precision_is_what_the_device_trains_in(monkeypatch):
    """On the CPU nnU-Net trains in float32: the options line says fp32 there, and that a STUNET_PRECISION is for
    CUDA; on CUDA it says the setting or the default."""
    monkeypatch.delenv("STUNET_PRECISION", raising=False)
    assert precision_in_force(torch.device("cpu")) == ("fp32", "cpu: nnU-Net trains in float32")
    assert precision_in_force(torch.device("cuda")) == ("fp16", "default")
    monkeypatch.setenv("STUNET_PRECISION", "bf16")
    assert precision_in_force(torch.device("cpu")) == (
        "fp32", "cpu: nnU-Net trains in float32; STUNET_PRECISION=bf16 applies on CUDA only")
    assert precision_in_force(torch.device("cuda", 0)) == ("bf16", "STUNET_PRECISION")


# -- fine-tuning trainers and -pretrained_weights --------------------------------------------------------------------
def test_every_fine_tuning_trainer_is_listed_as_needing_weights():
    from stunet.cli.info import main
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        main(["--trainers"])
    rows = [line.split(None, 1) for line in out.getvalue().splitlines() if line.startswith("STUNetTrainer")]
    fine_tuning = {name for name, _ in rows if "_ft" in name}
    assert {"STUNetTrainer_small_ft_heads", "STUNetTrainer_large_ft_frozen_encoder", "STUNetTrainer_base_ft_paper",
            "STUNetTrainer_base_ft"} <= fine_tuning
    for name, description in rows:
        assert ("needs -pretrained_weights" in description) == (name in fine_tuning), name


class FineTuningStandInWithoutWeights:
    """A stand-in of a fine-tuning trainer that reaches training without -pretrained_weights."""

    requires_pretrained, pretrained_report, current_epoch, model_name = True, None, 0, "stunet_small"


def test_a_fine_tuning_trainer_without_weights_stops_in_one_line():
    with pytest.raises(SystemExit) as stop:
        STUNetTrainer.on_train_start(FineTuningStandInWithoutWeights())
    message = str(stop.value.code)
    assert message.startswith("nnUNetv2_train: error: FineTuningStandInWithoutWeights fine-tunes "
                              "pretrained weights: add -pretrained_weights FILE") and "\n" not in message
    assert "STUNetTrainer_small" in message  # the from-scratch trainer of that size


# -- one axis order, no float32 noise --------------------------------------------------------------------------------
def test_the_budget_says_every_size_and_spacing_in_the_header_order():
    """The model's spacing (nnU-Net's z, y, x, transposed) is said in the header's x, y, z order like the image's, and
    without float32 noise."""
    from stunet.errors import CaseError
    from stunet.prediction.budget import VoxelBudget
    target = np.array([2.0, 0.9, 0.9], dtype=np.float32).tolist()  # z, y, x as nnU-Net's plans hold it
    budget = VoxelBudget(target, [0, 1, 2], limit=1000)
    with pytest.raises(CaseError) as error:
        budget.check(Path("ct.nii.gz"), (90, 90, 10), (0.9, 0.9, 2.0))
    message = str(error.value)
    assert "spacing (0.9, 0.9, 2.0) mm its 90 x 90 x 10 voxels of (0.9, 0.9, 2.0) mm become 90 x 90 x 10" in message
    assert "x, y, z as in the image header" in message and "99999" not in message
    transposed = VoxelBudget([0.9, 2.0, 0.8], [1, 0, 2], limit=1000)  # nnU-Net's axes (y, z, x)
    assert transposed.xyz(transposed.target_spacing) == [0.8, 0.9, 2.0]
    with pytest.raises(CaseError, match=r"spacing \(0.8, 0.9, 2.0\) mm its 80 x 90 x 10 voxels .* become "
                                        r"80 x 90 x 10 = "):
        transposed.check(Path("ct.nii.gz"), (80, 90, 10), (0.8, 0.9, 2.0))


def test_rounded_numbers():
    from stunet.errors import numbers, rounded
    assert rounded(np.float32(0.9)) == 0.9 and numbers(np.array([2.0, 0.9, 0.9], np.float32)) == "(2.0, 0.9, 0.9)"
    assert numbers([1234567.0, 1e-7, 0.12345678]) == "(1234567.0, 1e-07, 0.1234568)"


def _planned(tmp_path, monkeypatch, labels: dict, spacing: list, label_map=None) -> dict:
    """What STUNetPlanner_small writes for a stand-in fingerprint (no images read)."""
    import json
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from stunet.nnunet.planner import PLANNERS

    name = "Dataset993_Messages"
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    (raw / name / "imagesTr").mkdir(parents=True)
    (raw / name / "labelsTr").mkdir(parents=True)
    for folder, ending in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):  # nnU-Net's reader choice
        sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(raw / name / folder / f"case_000{ending}"))
    (preprocessed / name).mkdir(parents=True)
    (raw / name / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                         "numTraining": 3, "file_ending": ".nii.gz"}))
    fingerprint = {"spacings": [spacing] * 3, "shapes_after_crop": [[60, 200, 180]] * 3,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {"0": {
                       "mean": 1.0, "median": 1.0, "std": 2.0, "min": -5.0, "max": 5.0, "percentile_00_5": -4.0,
                       "percentile_99_5": 4.0}}}
    (preprocessed / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_raw", str(raw))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_preprocessed", str(preprocessed))
    planner = PLANNERS["stunet_small"](name, gpu_memory_target_in_gb=8, label_map=label_map)
    planner.plan_experiment()
    return json.loads((preprocessed / name / f"{planner.plans_identifier}.json").read_text())


def test_plans_hold_spacings_as_people_write_them(tmp_path, monkeypatch):
    noisy = float(np.float32(0.9))  # 0.8999999761581421
    plans = _planned(tmp_path, monkeypatch, {"background": 0, "liver": 1}, [2.0, noisy, noisy])
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.0, 0.9, 0.9]
    assert plans["original_median_spacing_after_transp"] == [2.0, 0.9, 0.9]


def test_a_label_map_of_other_labels_is_refused(tmp_path, monkeypatch):
    """kidneys_merged names 'kidney'; a dataset of a ball and a box has neither: refused in one line naming both."""
    with pytest.raises(ValueError) as error:
        _planned(tmp_path, monkeypatch, {"background": 0, "ball": 1, "box": 2}, [1.5, 1.5, 1.5], "kidneys_merged")
    message = str(error.value)
    assert message.startswith("--label-map kidneys_merged: its labels (kidney) are none of the dataset's (ball, "
                              "box)") and "\n" not in message
    plans = _planned(tmp_path / "kidney", monkeypatch, {"background": 0, "kidney": 1}, [1.5, 1.5, 1.5],
                     "kidneys_merged")
    assert plans["configurations"]["3d_fullres"]["stunet_label_map"] == "kidneys_merged"


def test_stunet_plans_refuses_a_label_map_of_other_labels_before_the_fingerprint(tmp_path, monkeypatch, capsys):
    import json
    from stunet.cli.plans import main
    (tmp_path / "raw" / "Dataset994_Shapes").mkdir(parents=True)
    (tmp_path / "raw" / "Dataset994_Shapes" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 1, "box": 2}, "numTraining": 0,
         "file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(SystemExit) as stop:
        main(["-d", "994", "--model", "stunet_small", "--label-map", "kidneys_merged"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("stunet-plans: error: --label-map kidneys_merged: its labels (kidney) are none of the "
                          "dataset's (ball, box)")
    assert not (tmp_path / "preprocessed").exists()  # stopped before nnU-Net's fingerprint


# -- names that match no label ----------------------------------------------------------------------------------------
def test_unknown_label_names_are_one_line_naming_the_known_ones(tmp_path):
    import json
    from stunet.prediction.output_labels import output_labels
    model = {0: "background", 1: "liver", 2: "spleen"}
    with pytest.raises(ValueError) as error:
        output_labels(model, None, "liver,pancreas")
    assert str(error.value) == "--labels: pancreas not among the output labels (liver, spleen)"
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"labels": {"1": {"name": "kidney", "from": ["kidney_left", "kidney_right"]}}}))
    with pytest.raises(ValueError) as error:
        output_labels(model, str(label_map), None)
    assert str(error.value) == (f"label map {label_map}: kidney_left, kidney_right are not classes of this model (its "
                                f"classes: liver, spleen)")
    with pytest.raises(ValueError, match="unknown label map 'kidneys'; shipped maps: amos22, btcv"):
        output_labels(model, "kidneys", None)


# -- progress in log files ----------------------------------------------------------------------------------------------
def test_a_log_file_gets_lines_without_bars():
    """stderr written to a file: the header, one line per case and the errors, no progress bar or escape code."""
    from stunet.prediction.discovery import Case
    from stunet.prediction.folder import TqdmReporter
    log = io.StringIO()
    reporter = TqdmReporter("stunet-predict", file=log)
    for case in reporter.begin("2 case(s)", [Case("a", [Path("a.nii.gz")], ".nii.gz"),
                                             Case("b", [Path("b.nii.gz")], ".nii.gz")]):
        with reporter.case(case.name) as (on_start, progress):
            on_start(4)
            for _ in range(4):
                progress(1)
        reporter.predicted(case.name, {"network": 1.0}, 4)
    reporter.error("b.nii.gz: broken")
    assert log.getvalue().splitlines() == ["stunet-predict: 2 case(s)", "a: network 1.0 s (4 tiles)",
                                           "b: network 1.0 s (4 tiles)", "stunet-predict: error: b.nii.gz: broken"]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


# -- the preview's panels ---------------------------------------------------------------------------------------------
def test_preview_panels_are_named_by_view(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from stunet.clinical.preview import write_preview
    titles = []
    original = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text), original(ax, text, *a, **k))[1])
    seg = np.zeros((20, 30, 40), np.uint8)
    seg[13, 10, 5] = 1
    write_preview(tmp_path / "case.png", np.zeros(seg.shape, np.float32), seg, (2.0, 0.9, 0.9), {1: "liver"})
    assert titles == ["axial (slice 14 of 20)", "coronal (slice 11 of 30)", "sagittal (slice 6 of 40)"]


# -- stunet-evaluate's unpaired cases --------------------------------------------------------------------------------
def test_evaluate_names_unpaired_cases_on_the_terminal(tmp_path):
    """A reference without a prediction and a prediction without a reference are both named (docs/evaluation.md)."""
    from stunet.evaluation.evaluate import evaluate
    for folder, names in (("ref", ("a", "lonely_reference")), ("pred", ("a", "stray_prediction"))):
        (tmp_path / folder).mkdir()
        for name in names:
            labels = np.zeros((4, 5, 6), np.uint8)
            labels[1:3, 1:4, 2:5] = 1
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / folder / f"{name}.nii.gz"))
    said = []
    evaluate(tmp_path / "ref", tmp_path / "pred", tmp_path / "out", report=False, progress=said.append,
             num_processes=1)
    assert "1 reference case(s) without a prediction, left out: lonely_reference" in said
    assert "1 prediction(s) without a reference, left out: stray_prediction" in said


def test_metrics_csv_holds_numbers_without_float32_noise():
    from stunet.evaluation.summary import write_csv_text
    text = write_csv_text([{"case": "a", "hd95": float(np.float32(0.9)), "dice": float("nan")}], ["case", "hd95", "dice"])
    assert text == "case,hd95,dice\na,0.9,\n"
