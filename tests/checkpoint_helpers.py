"""Fabricated checkpoints in each format the released and trained STU-Nets come in."""
from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from stunet.weights.checkpoint import Checkpoint
from stunet.nnunet.convert import write_safetensors

V1_PLANS = {"num_classes": 104, "plans_per_stage": {0: {
    "patch_size": np.array([128, 128, 128]), "current_spacing": np.array([1.5, 1.5, 1.5]),
    "pool_op_kernel_sizes": [[2, 2, 2]] * 4 + [[1, 1, 2]], "do_dummy_2D_data_aug": np.False_}},
    "normalization_schemes": OrderedDict([(0, "nonCT")])}


def write_v1(state_dict: dict, path: Path, legacy: bool = True) -> Path:
    """``path`` (.model, as nnU-Net v1 saved it) and ``path.pkl`` (trainer name and plans, numpy values inside)."""
    checkpoint = {"epoch": 4000, "state_dict": OrderedDict(state_dict),
                  "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": np.float64(1e-5), "params": [0]}]},
                  "lr_scheduler_state_dict": None,
                  "plot_stuff": ([np.float64(0.5)], [np.float32(0.4)], [], [np.float64(0.8)]),
                  "best_stuff": (3999, np.float64(0.41), 3990, np.float64(0.42)), "amp_grad_scaler": {"scale": 1024.0}}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    info = OrderedDict(init=("", 0, "", "", False, 0, True, False, True), name="STUNetTrainer_small", plans=V1_PLANS)
    with open(f"{path}.pkl", "wb") as f:
        pickle.dump(info, f, protocol=2)
    return path


def write_v2(state_dict: dict, path: Path, labels: dict | None = None) -> Path:
    """``checkpoint_final.pth`` as nnU-Net v2 saves it (numpy scalars, a torch.device, nested plans)."""
    dataset_json = {"labels": labels or {"background": 0, "organ": 1}, "channel_names": {"0": "CT"}}
    torch.save({"network_weights": state_dict, "optimizer_state": {"state": {}, "param_groups": []},
                "grad_scaler_state": None,
                "logging": {"ema_fg_dice": [np.float32(0.7)], "train_losses": [np.float64(-0.5)]},
                "_best_ema": np.float32(0.7), "current_epoch": 1000, "trainer_name": "STUNetTrainer_small_ft",
                "init_args": {"plans": {"plans_name": "nnUNetPlans"}, "configuration": "3d_fullres", "fold": 0,
                              "dataset_json": dataset_json, "device": torch.device("cpu")},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, path)
    return path


def write_bare(state_dict: dict, path: Path) -> Path:
    """A state_dict saved from a DDP-wrapped, compiled network (prefixed names)."""
    torch.save({f"module._orig_mod.{k}": v for k, v in state_dict.items()}, path)
    return path


def write_safetensors_file(state_dict: dict, path: Path) -> Path:
    write_safetensors(Checkpoint(path, "state-dict", dict(state_dict)), path)
    return path


WRITERS = {"nnunet-v1": write_v1, "nnunet-v1-zip": lambda sd, p: write_v1(sd, p, legacy=False),
           "nnunet-v2": write_v2, "state-dict": write_bare, "safetensors": write_safetensors_file}
SUFFIX = {"nnunet-v1": ".model", "nnunet-v1-zip": ".model", "nnunet-v2": ".pth", "state-dict": ".pt",
          "safetensors": ".safetensors"}
