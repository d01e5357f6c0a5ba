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
from stunet.clinical.quality import FRAGMENTED, LOW_CONFIDENCE, components, flag, label_confidence, quality
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
        assert {"confidence", "uncertain_fraction", "components", "largest_component_fraction", "flag"} <= set(entry)
        if entry["voxels"]:
            assert 0 < entry["confidence"] <= 1 and entry["components"] >= 1
    header = (tmp_path / "out" / "statistics.csv").read_text().splitlines()[0]
    assert header.endswith("confidence,uncertain_fraction,components,largest_component_fraction,flag")


def test_quality_of_a_map_without_a_tally():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[1:3, 1:3, 1:3] = 1
    out = quality(seg, None, {1: [1]}, {0: "background", 1: "ball"})
    assert out["ball"]["components"] == 1 and np.isnan(out["ball"]["confidence"])
