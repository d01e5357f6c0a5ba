"""Quality control without labels (issue 26, point 5): the winning probabilities come from the export's own logits,
the components from the written map, the flags from documented rules; `stunet-predict --qc` writes them into the
statistics. The signal itself (a degraded case scores worse) is shown with the demo's trained model in
tests/test_demo.py (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from predict_helpers import make_model_folder, predict, write_cases
from stunet.clinical.quality import (CUT_BY_BORDER, FRAGMENTED, LOW_CASE_CONFIDENCE, LOW_CONFIDENCE,
                                     OUTSIDE_INTENSITIES, QC_FIELDS, border_section, case_confidence, components,
                                     flag, label_confidence, quality)
from stunet.prediction.export import ConfidenceTally, argmax


def test_the_tally_is_the_softmax_of_the_winner():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 9.0], [1.0, 0.0, 0.0]])
    tally = ConfidenceTally()
    tally.add(logits.argmax(1), logits)
    p = torch.softmax(logits, 1).max(1).values.double()
    assert tally.voxels.tolist() == [2, 1, 1]
    assert torch.allclose(tally.confidence, torch.stack([p[0] + p[3], p[1], p[2]]))
    assert tally.uncertain.tolist() == [0, 1, 0]  # 0.36 for the near-tie


def test_argmax_fills_the_tally_from_the_logits_it_computes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seg_outputs = torch.nn.ModuleList([torch.nn.Conv3d(4, 3, 1)])

    net = Net()
    features = torch.randn(1000, 4)
    tally = ConfidenceTally()
    labels = argmax([net], [features], voxels_per_chunk=128, tally=tally)
    logits = features @ net.seg_outputs[0].weight.reshape(3, 4).T + net.seg_outputs[0].bias
    assert torch.equal(labels.long(), logits.argmax(1))
    assert torch.allclose(tally.confidence.sum(), torch.softmax(logits, 1).max(1).values.double().sum())


def test_components_and_flags():
    seg = np.zeros((20, 20, 20), np.uint8)
    seg[2:8, 2:8, 2:8] = 1  # one block
    seg[12:14, 12:14, 12:14] = 1  # a second, smaller piece of the same label
    seg[15, 15, 15] = 2
    seg[16, 16, 16] = 2  # diagonal neighbours: one 26-connected component
    found = components(seg, [1, 2, 3])
    assert found[1] == (2, 216 / 224) and found[2] == (1, 1.0) and found[3][0] == 0
    assert flag(0.95, 0.01, 2, 216 / 224) == ""
    assert "low confidence" in flag(LOW_CONFIDENCE - 0.1, 0.0, 1, 1.0)
    assert "uncertain" in flag(0.9, 0.5, 1, 1.0)
    assert "fragmented" in flag(0.95, 0.0, 3, FRAGMENTED - 0.2)
    assert flag(float("nan"), float("nan"), 0, float("nan")) == ""  # absent: nothing to judge
    merged = label_confidence([10, 5, 5], [9.0, 2.0, 4.0], [0, 2, 1], {1: [1, 2], 2: [0]})
    assert merged[1] == pytest.approx((0.6, 0.3)) and merged[2] == pytest.approx((0.9, 0.0))


def test_predict_writes_the_quality_fields(tmp_path):
    model = make_model_folder(tmp_path / "model")
    write_cases(tmp_path / "in", 1)
    predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "--disable-tta", "--qc")
    stats = json.loads((tmp_path / "out" / "case0.statistics.json").read_text())
    for entry in stats.values():
        assert set(QC_FIELDS) <= set(entry)
        if entry["voxels"]:
            assert 0 < entry["confidence"] <= 1 and entry["components"] >= 1
    header = (tmp_path / "out" / "statistics.csv").read_text().splitlines()[0]
    assert header.endswith(",".join(QC_FIELDS))


def test_quality_of_a_map_without_a_tally():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[1:3, 1:3, 1:3] = 1
    out = quality(seg, None, {1: [1]}, {0: "background", 1: "ball"})
    assert out["ball"]["components"] == 1 and np.isnan(out["ball"]["confidence"])


class Tally:
    """A ConfidenceTally's sums as the export leaves them (per model class: voxels won, the sum of their winning
    probabilities, how many below 0.5)."""

    def __init__(self, voxels, confidence, uncertain):
        self.voxels, self.confidence, self.uncertain = (torch.tensor(a, dtype=torch.float64)
                                                        for a in (voxels, confidence, uncertain))


def test_the_rules_on_synthetic_tallies():
    """Each rule fires on the field it reads, at its documented threshold, and names itself; NaN fires nothing."""
    assert case_confidence([1000, 10, 10], [990.0, 9.0, 9.4], {0: [0], 1: [1], 2: [2]}) == pytest.approx(0.92)
    assert flag(0.99, 0.0, 1, 1.0, LOW_CASE_CONFIDENCE + 0.01, 0.0, 0.0) == ""
    assert "low confidence over the case" in flag(0.99, 0.0, 1, 1.0, LOW_CASE_CONFIDENCE - 0.01)
    assert "cut by the image border" in flag(0.99, 0.0, 1, 1.0, border=CUT_BY_BORDER)
    assert "intensities unlike training" in flag(0.99, 0.0, 1, 1.0, outside=OUTSIDE_INTENSITIES + 0.01)
    assert flag(0.99, 0.0, 0, float("nan"), 0.5, 1.0, 1.0) == ""  # absent: nothing to judge
    assert flag(*[float("nan")] * 2, 1, 1.0) == ""  # confidence unknown (a region-based model)


def test_border_section_measures_how_deep_a_face_cuts():
    seg = np.zeros((10, 12, 12), np.uint8)
    seg[3:7, 0:6, 3:9] = 1  # a box cut by the y = 0 face where it is widest
    grid = np.ogrid[:10, :12, :12]
    ball = sum((g - c) ** 2 for g, c in zip(grid, (5, 6, 3))) <= 9
    seg[ball & (seg == 0)] = 2  # a ball that reaches the x = 0 face with one voxel row of its widest section
    seg[5, 6, 11] = 3  # a speck on the x = 11 face: cut where it is widest
    boxes = {1: (slice(3, 7), slice(0, 6), slice(3, 9))}
    assert border_section(seg[boxes[1]] == 1, boxes[1], seg.shape) == 1.0
    inner = np.zeros((10, 12, 12), np.uint8)
    inner[3:7, 3:7, 3:7] = 1
    assert quality(inner, None, {1: [1]}, {1: "box"})["box"]["border_section"] == 0.0
    found = quality(seg, None, {1: [1], 2: [2], 3: [3]}, {1: "box", 2: "ball", 3: "speck"})
    assert found["box"]["border_section"] == 1.0 and "cut by the image border" in found["box"]["flag"]
    assert 0 < found["ball"]["border_section"] < CUT_BY_BORDER and "cut" not in found["ball"]["flag"]


def test_intensities_outside_the_training_range_and_the_case_confidence():
    seg = np.zeros((6, 6, 6), np.uint8)
    seg[1:3, 1:5, 1:5] = 1
    seg[3:5, 1:5, 1:5] = 2
    image = np.where(seg == 1, 100.0, 0.0)
    image[3:5, 1:5, 1:3] = 900.0  # half of label 2 far brighter than any training label
    properties = {"percentile_00_5": -50.0, "percentile_99_5": 300.0, "mean": 80.0}
    tally = Tally([150, 32, 32], [148.0, 31.5, 20.0], [0, 0, 12])
    out = quality(seg, tally, {0: [0], 1: [1], 2: [2]}, {0: "background", 1: "bright", 2: "mixed"}, image, properties)
    assert out["bright"]["outside_intensity_fraction"] == 0.0 and out["mixed"]["outside_intensity_fraction"] == 0.5
    assert "intensities unlike training" in out["mixed"]["flag"]
    assert out["bright"]["case_confidence"] == out["mixed"]["case_confidence"] == pytest.approx(51.5 / 64)
    assert "low confidence over the case" in out["bright"]["flag"]
    unknown = quality(seg, tally, {1: [1], 2: [2]}, {1: "bright", 2: "mixed"}, image, {"mean": 1.0})
    assert np.isnan(unknown["mixed"]["outside_intensity_fraction"])  # no range in the plans: not measured


@pytest.mark.slow
@pytest.mark.xfail(reason="the goal (4 of 5 degradations flagged) is not met: 3.3 measured; inverted and transposed "
                          "synthetic cases go unnoticed (docs/evaluation.md)", strict=True)
def test_the_rules_notice_documented_degradations(tmp_path_factory):
    """With the model stunet-demo trains (minutes on a CPU), benchmarks/qc_degradations.py's five degradations of
    fresh synthetic cases: flagged in at least 4 of 5 on average, clean cases at most 1 in 10 (4 cases here; the
    measured table with more is in docs/evaluation.md)."""
    import subprocess
    import sys
    from pathlib import Path

    work = tmp_path_factory.mktemp("qc") / "demo"
    done = subprocess.run([str(Path(sys.executable).parent / "stunet-demo"), "--workdir", str(work), "--device", "cpu"],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    model = next((work / "nnUNet_results").glob("*/STUNetTrainer_small_quick__nnUNetPlans__3d_fullres"))
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from qc_degradations import DEGRADATIONS, measure

    results = measure(model, cases=4)
    flagged = {variant: [any(e["flag"] for e in case.values()) for case in cases] for variant, cases in results.items()}
    assert sum(flagged["clean"]) <= 0.1 * len(flagged["clean"]) + 0.5, results["clean"]
    assert np.mean([sum(flagged[v][i] for v in DEGRADATIONS) for i in range(4)]) >= 4, flagged
