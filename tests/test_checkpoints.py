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
from stunet.checkpoint import CheckpointError, load_checkpoint, read_pickle
from stunet.config import STUNetConfig

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
