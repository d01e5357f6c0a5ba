"""What the commands and the library say means what it says: the precision in force, one axis order, numbers without
float32 noise, which trainers need pretrained weights, the preview's panel names, plain lines in log files, unknown
label names and unmatched predictions named in one line."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


class STUNetTrainer_small_ft_heads_without_weights:
    """A stand-in of a fine-tuning trainer that reaches training without -pretrained_weights."""

    requires_pretrained, pretrained_report, current_epoch, model_name = True, None, 0, "stunet_small"


def test_a_fine_tuning_trainer_without_weights_stops_in_one_line():
    with pytest.raises(SystemExit) as stop:
        STUNetTrainer.on_train_start(STUNetTrainer_small_ft_heads_without_weights())
    message = str(stop.value.code)
    assert message.startswith("nnUNetv2_train: error: STUNetTrainer_small_ft_heads_without_weights fine-tunes "
                              "pretrained weights: add -pretrained_weights FILE") and "\n" not in message
    assert "STUNetTrainer_small" in message  # the from-scratch trainer of that size
