"""Reading every checkpoint format safely, converting between them, and stock nnU-Net loading the results."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import stunet
from checkpoint_helpers import SUFFIX, WRITERS, write_v1
from stunet.errors import CheckpointError
from stunet.weights.checkpoint import load_checkpoint
from stunet.weights.safe_load import read_pickle
from stunet.models.config import STUNetConfig

RELEASED_STRIDES = [[2, 2, 2]] * 4 + [[1, 1, 2]]


@pytest.fixture(scope="module")
def small_105():
    torch.manual_seed(0)
    return stunet.create_model("stunet_small", strides=RELEASED_STRIDES).state_dict()


@pytest.fixture(scope="module")
def tiny_reference(shared):
    ref = torch.load(shared("reference/stunet_official_parity_tiny.pt"), weights_only=True)
    return ref


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip_small_105_classes(fmt, small_105, tmp_path):
    path = WRITERS[fmt](small_105, tmp_path / f"small_ep4k{SUFFIX[fmt]}")
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == fmt.replace("-zip", "")
    _assert_same(checkpoint.state_dict, small_105)
    model = stunet.create_model("stunet_small", pretrained=path)  # the released architecture, strict
    _assert_same(model.state_dict(), small_105)
    assert model.config.strides[-1] == (1, 1, 2) and model.pretrained_config.name == "stunet_small.totalseg104"


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip_tiny_reference_model(fmt, tiny_reference, tmp_path):
    path = WRITERS[fmt](tiny_reference["state_dict"], tmp_path / f"tiny{SUFFIX[fmt]}")
    loaded = load_checkpoint(path).state_dict
    _assert_same(loaded, tiny_reference["state_dict"])
    model = stunet.STUNet(**vars(STUNetConfig.from_published(tiny_reference["config"]))).eval()
    model.load_state_dict(loaded, strict=True)
    with torch.no_grad():
        model.decoder.deep_supervision = False
        torch.testing.assert_close(model(tiny_reference["input"]), tiny_reference["output"], rtol=0, atol=1e-4)


def test_v1_companion_plans_and_v2_metadata_are_read(small_105, tmp_path):
    v1 = load_checkpoint(write_v1(small_105, tmp_path / "small_ep4k.model"))
    assert v1.trainer_name == "STUNetTrainer_small"
    assert v1.plans["plans_per_stage"][0]["pool_op_kernel_sizes"][-1] == [1, 1, 2]
    v2 = load_checkpoint(WRITERS["nnunet-v2"](small_105, tmp_path / "checkpoint_final.pth"))
    assert (v2.trainer_name, v2.configuration, v2.mirroring_axes) == ("STUNetTrainer_small_ft", "3d_fullres", (0, 1, 2))
    assert v2.label_names == {0: "background", 1: "organ"}


def test_released_plans_pickles_read_safely(shared):
    for name in ("plans.pkl", "small_ep4k.model.pkl", "huge_ep4k.model.pkl"):
        content = read_pickle(shared(f"reference/released_plans/{name}"))
        plans = content.get("plans", content)
        assert plans["num_classes"] == 104


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("where", ["model", "companion-pkl", "pth"])
def test_malicious_pickle_is_refused_without_running(where, small_105, tmp_path):
    marker = tmp_path / "pwned"
    if where == "model":
        path = tmp_path / "evil.model"
        torch.save({"state_dict": small_105, "payload": _CreatesFile(marker)}, path)
    elif where == "companion-pkl":
        path = write_v1(small_105, tmp_path / "evil.model")
        with open(f"{path}.pkl", "wb") as f:
            pickle.dump({"plans": _CreatesFile(marker)}, f)
    else:
        path = tmp_path / "checkpoint_final.pth"
        torch.save({"network_weights": small_105, "trainer_name": _CreatesFile(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to unpickle .*system.*--trust-checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        stunet.create_model("stunet_small", pretrained=path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [(b"not a checkpoint", "not a PyTorch checkpoint"),
                                              (b"\x1f\x8b\x08\x00", "gzip file")])
def test_non_checkpoints_fail_with_the_file_named(content, message, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{path}.*{message}"):
        load_checkpoint(path)


def test_loading_into_another_size_names_both(small_105, tmp_path):
    path = write_v1(small_105, tmp_path / "small_ep4k.model")
    with torch.device("meta"), pytest.raises(CheckpointError, match="stunet_small but the network is stunet_large"):
        stunet.create_model("stunet_large", pretrained=path)


def _convert(*args):
    exe = Path(sys.executable).parent / "stunet-convert"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_convert_to_nnunet_checkpoint_loads_in_stock_nnunet(small_105, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as stock_loader
    from stunet.nnunet_plugins.stunet_trainers import STUNetTrainer_small

    source = write_v1(small_105, tmp_path / "small_ep4k.model")
    out = tmp_path / "checkpoint_final.pth"
    done = _convert(source, out)
    assert done.returncode == 0, done.stderr
    saved = torch.load(out, weights_only=False)  # as nnU-Net reads it
    assert saved["trainer_name"] == "STUNetTrainer_small" and saved["init_args"]["configuration"] == "3d_fullres"
    network = STUNetTrainer_small.build_network_architecture(
        None, SimpleNamespace(pool_op_kernel_sizes=[[1, 1, 1]] + RELEASED_STRIDES), 1, 105, False)
    stock_loader(network, str(out))
    _assert_same({k: v for k, v in network.state_dict().items()}, small_105)
    done = _convert(source, out)
    assert done.returncode == 2 and "--overwrite" in done.stderr


def test_convert_to_model_folder_loads_in_stock_predictor(small_105, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    source = write_v1(small_105, tmp_path / "small_ep4k.model")
    folder = tmp_path / "model"
    assert _convert(source, folder).returncode == 0
    predictor = nnUNetPredictor(device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=("all",))
    _assert_same(predictor.network.state_dict(), small_105)
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["spacing"] == [1.5, 1.5, 1.5] and plans["patch_size"] == [128, 128, 128]
    assert plans["normalization_schemes"] == ["ZScoreNormalization"]
    assert plans["architecture"]["arch_kwargs"]["strides"][-1] == [1, 1, 2]
    assert json.loads((folder / "dataset.json").read_text())["labels"]["liver"] == 40


def test_convert_to_safetensors_keeps_labels_and_config(small_105, tmp_path):
    source = write_v1(small_105, tmp_path / "small_ep4k.model")
    out = tmp_path / "small.safetensors"
    assert _convert(source, out).returncode == 0
    checkpoint = load_checkpoint(out)
    _assert_same(checkpoint.state_dict, small_105)
    assert checkpoint.label_names[40] == "liver"
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["model"] == "stunet_small" and config["architecture"]["strides"][-1] == [1, 1, 2]


def test_a_missing_or_misshapen_tensor_is_one_line_naming_file_and_tensor(small_105, tmp_path):
    missing = {k: v for k, v in small_105.items() if k != "conv_blocks_localization.2.0.conv2.weight"}
    misshapen = {**small_105, "conv_blocks_context.3.0.norm1.weight": torch.zeros(7)}
    for name, state in (("missing", missing), ("misshapen", misshapen)):
        path = write_v1(state, tmp_path / f"{name}.model")
        tensor = "conv_blocks_localization.2.0.conv2.weight" if name == "missing" else \
            "conv_blocks_context.3.0.norm1.weight"
        with pytest.raises(CheckpointError) as error:
            stunet.create_model("stunet_small", pretrained=path)
        assert str(path) in str(error.value) and tensor in str(error.value) and "\n" not in str(error.value)
        done = _convert(path, tmp_path / f"{name}_out.pth")
        assert done.returncode == 1 and tensor in done.stderr and str(path) in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_second_release_of_a_size_is_supported_and_ambiguity_is_named(small_105, tmp_path):
    from stunet.nnunet.convert import nnunet_v2_parts
    from stunet.weights.loading import Weights
    from stunet.weights.pretrained import get_pretrained_config, register_pretrained_config, unregister_pretrained_config

    base = get_pretrained_config("stunet_small.totalseg104")
    fixture = {"name": "stunet_small.organs3", "model": "stunet_small", "description": "a fixture release",
               "architecture": {**base.architecture, "num_classes": 4}, "preprocessing": base.preprocessing,
               "labels": {"0": "background", "1": "liver", "2": "spleen", "3": "pancreas"},
               "checkpoint": {"file": "organs3.pth", "format": "nnunet-v2", "trainer": "STUNetTrainer_small"}}
    config_file = tmp_path / "organs3.json"
    config_file.write_text(json.dumps(fixture))
    register_pretrained_config(config_file)
    try:
        with pytest.raises(ValueError, match="stunet_small.organs3, stunet_small.totalseg104; name one"):
            get_pretrained_config("stunet_small")
        torch.manual_seed(1)
        organs = stunet.create_model("stunet_small.organs3").state_dict()
        checkpoint = load_checkpoint(write_v1(organs, tmp_path / "organs.model"))
        assert Weights.of(checkpoint).release().name == "stunet_small.organs3"  # told apart by the class count
        _, plans, dataset_json = nnunet_v2_parts(checkpoint)
        assert dataset_json["labels"] == {"background": 0, "liver": 1, "spleen": 2, "pancreas": 3}
        model = stunet.create_model("stunet_small.organs3", pretrained=checkpoint.path)
        assert model.pretrained_config.name == "stunet_small.organs3" and model.config.num_classes == 4
        # the same classes twice: conversion refuses to guess and names both
        register_pretrained_config({**fixture, "name": "stunet_small.organs3b"})
        with pytest.raises(ValueError, match="stunet_small.organs3, stunet_small.organs3b"):
            Weights.of(checkpoint).release()
    finally:
        unregister_pretrained_config("stunet_small.organs3")
        unregister_pretrained_config("stunet_small.organs3b")


def test_convert_of_a_multichannel_checkpoint_writes_that_many_channels(tmp_path):
    torch.manual_seed(0)
    state = stunet.create_model("stunet_small", in_channels=3, strides=RELEASED_STRIDES).state_dict()
    source = write_v1(state, tmp_path / "three.model")
    folder = tmp_path / "three"
    assert _convert(source, folder, "--pretrained", "stunet_small.totalseg104").returncode == 0
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert len(dataset_json["channel_names"]) == 3 and len(plans["normalization_schemes"]) == 3
