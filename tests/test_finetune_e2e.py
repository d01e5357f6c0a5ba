"""Fine-tuning through nnUNetv2_train -pretrained_weights, from a fabricated released (nnU-Net v1) checkpoint."""
import pytest
import torch

import stunet
from checkpoint_helpers import write_v1
from nnunet_helpers import run
from stunet.weights.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def released_small(tmp_path_factory):
    """A 105-class STU-Net-S with the released layout, saved as small_ep4k.model + small_ep4k.model.pkl."""
    torch.manual_seed(0)
    model = stunet.create_model("stunet_small", strides=[[2, 2, 2]] * 4 + [[1, 1, 2]])
    return write_v1(model.state_dict(), tmp_path_factory.mktemp("released") / "small_ep4k.model")


TRAINER_SETTINGS = ("STUNET_PRECISION", "STUNET_ACTIVATION_CHECKPOINTING", "STUNET_LABEL_MAP",
                    "STUNET_TRUST_CHECKPOINT")


def _train(planned_dataset, trainer, *extra, **settings):
    root, _, env = planned_dataset
    log = run(["nnUNetv2_train", "990", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *extra],
              {**{k: v for k, v in env.items() if k not in TRAINER_SETTINGS}, **settings})
    fold = root / "results" / "Dataset990_STUNetSynthetic" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    return log, load_checkpoint(fold / "checkpoint_final.pth").state_dict


def test_fine_tune_from_released_v1_checkpoint(planned_dataset, released_small):
    pretrained = load_checkpoint(released_small).state_dict
    log, trained = _train(planned_dataset, "STUNetTrainer_small_ft_smoke", "-pretrained_weights", str(released_small))
    assert "Loaded pretrained weights" in log and "(nnunet-v1)" in log
    assert "120 tensors transferred, 0 adapted to the input channels, 10 re-initialised" in log
    assert "background <- background" in log  # label-aware: the synthetic labels' background row
    assert "head rows re-initialised, no pretrained class matched (2 classes):\n    ball\n    box" in log
    assert "give a label map" in log
    # what was built and with which options, in the log and in debug.json
    fold = planned_dataset[0] / "results" / "Dataset990_STUNetSynthetic" / \
        "STUNetTrainer_small_ft_smoke__nnUNetPlans__3d_fullres" / "fold_0"
    training_log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "STU-Net: stunet_small, 14.55M parameters, 1 input channel(s), 3 outputs" in training_log
    assert "precision 'fp32' (cpu: nnU-Net trains in float32)" in training_log  # what is in force on the CPU
    assert "trainable 'all' (trainer STUNetTrainer_small_ft_smoke)" in training_log
    assert "stunet_options" in (fold / "debug.json").read_text()
    assert trained["seg_outputs.4.weight"].shape[0] == 3  # background, ball, box
    changed = [k for k in pretrained if not k.startswith("seg_outputs.") and not torch.equal(pretrained[k], trained[k])]
    assert changed  # it trained


def test_frozen_encoder_stays_equal_to_the_pretrained_weights(planned_dataset, released_small):
    pretrained = load_checkpoint(released_small).state_dict
    log, trained = _train(planned_dataset, "STUNetTrainer_small_ft_frozen_encoder_smoke", "-pretrained_weights",
                          str(released_small), STUNET_PRECISION="bf16")
    # precision is one setting for every trainer; on the CPU nnU-Net trains in float32, and the log says so
    assert "precision 'fp32' (cpu: nnU-Net trains in float32; STUNET_PRECISION=bf16 applies on CUDA only)" in log
    encoder = [k for k in pretrained if k.startswith("conv_blocks_context.")]
    assert encoder and all(torch.equal(pretrained[k], trained[k]) for k in encoder)
    decoder = [k for k in pretrained if k.startswith("conv_blocks_localization.")]
    assert any(not torch.equal(pretrained[k], trained[k]) for k in decoder)


def test_a_broken_pretrained_file_is_one_line_naming_it(planned_dataset, released_small, tmp_path):
    state = {k: v for k, v in load_checkpoint(released_small).state_dict.items() if k != "seg_outputs.4.bias"}
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(AssertionError) as error:
        _train(planned_dataset, "STUNetTrainer_small_ft_smoke", "-pretrained_weights", str(broken))
    stderr = str(error.value).split("--- stderr\n")[1]
    assert f"nnUNetv2_train: error: -pretrained_weights {broken}: the checkpoint lacks tensor seg_outputs.4.bias" \
        in stderr and "Traceback" not in stderr


def test_fine_tune_trainer_without_weights_says_what_to_add(planned_dataset):
    with pytest.raises(AssertionError, match="fine-tunes pretrained weights: add -pretrained_weights FILE"):
        _train(planned_dataset, "STUNetTrainer_small_ft_smoke")
