"""Hostile inputs against the deployment path: a cache of exported graphs that was tampered with, an exported graph
or sidecar that was, and stunet-export given impossible options or a model folder with impossible numbers. Each ends
in one error line naming the file and the rule (or a correct result), in bounded time, with nothing wrong written.

Built from a tiny generated model folder (tests/predict_helpers.py). Needs the deploy extra."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from predict_helpers import make_model_folder, predict, write_cases

MISSING = [name for name in ("onnx", "onnxruntime", "openvino") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the deploy extra is not installed ({', '.join(MISSING)} "
                                                      f"missing): pip install \".[deploy]\"")
BOUND_S = 120  # seconds any refusal may take (loading the model included), on a slow shared CPU


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A model folder, one case, and stunet-export's graph of it (model.onnx and model.json)."""
    from stunet.cli.export import main
    from stunet.deploy.engines import clear_compiled

    clear_compiled()
    root = tmp_path_factory.mktemp("hostile_deploy")
    model = make_model_folder(root / "model")
    write_cases(root / "in", 1)
    main([str(model), "-o", str(root / "exported" / "model.onnx")])
    return {"root": root, "model": model, "graph": root / "exported" / "model.onnx"}


def _copy_model(folder, target: Path, plans=None) -> Path:
    """A model folder beside the fixture's, with the same checkpoint (linked) and ``plans`` edited by a function."""
    (target / "fold_0").mkdir(parents=True)
    os.link(folder["model"] / "fold_0" / "checkpoint_final.pth", target / "fold_0" / "checkpoint_final.pth")
    shutil.copy(folder["model"] / "dataset.json", target / "dataset.json")
    content = json.loads((folder["model"] / "plans.json").read_text())
    if plans is not None:
        plans(content)
    (target / "plans.json").write_text(json.dumps(content))
    return target


def _features_match_torch(segmenter, network) -> None:
    tile = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 1, 16, 32, 32), dtype=np.float32))
    with torch.inference_mode():
        ours = segmenter.predictor.runners[0].decode(tile)[0]
        theirs = network.decode(tile, all_stages=False)[0]
    assert (ours - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def _export(*args) -> tuple[int, str]:
    """stunet-export ARGS in this process: its exit status and what it printed on stderr."""
    from stunet.cli.export import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, err.getvalue()


def _one_error_line(text: str, prog: str, *words: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], text[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# -- 1. the engine cache --------------------------------------------------------------------------------------------
def test_a_planted_or_stale_cached_graph_is_exported_again_and_a_link_is_refused(folder, tmp_path):
    import stunet
    from stunet.deploy.cache import file_sha256, weights_sha256
    from stunet.prediction.model import load_model_folder

    model = _copy_model(folder, tmp_path / "model")
    network = load_model_folder(model).networks[0]
    entry = model / "fold_0" / "stunet-deploy" / f"{weights_sha256(network)[:16]}-16x32x32"
    entry.mkdir(parents=True)
    shutil.copy(folder["graph"], entry / "features.onnx")  # another graph (the logits), no record: planted
    started = time.monotonic()
    with pytest.warns(UserWarning, match="no record of its export; not used, the graph is exported again"):
        seg = stunet.Segmenter.from_model_folder(model, backend="onnxruntime")
    assert time.monotonic() - started < BOUND_S
    _features_match_torch(seg, network)
    record = json.loads((entry / "export.json").read_text())
    assert record["files"]["features.onnx"]["sha256"] == file_sha256(entry / "features.onnx")

    # the checkpoint replaced by another of the same size and modification time: another network, another entry
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    stat = checkpoint.stat()
    saved = torch.load(checkpoint, weights_only=False)
    saved["network_weights"]["seg_outputs.4.bias"] += 1.0
    saved["network_weights"]["conv_blocks_localization.4.0.conv1.bias"] += 0.5
    checkpoint.unlink()  # a new file (the fixture's is linked)
    torch.save(saved, checkpoint)
    assert checkpoint.stat().st_size == stat.st_size
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replaced = stunet.Segmenter.from_model_folder(model, backend="onnxruntime")
    _features_match_torch(replaced, load_model_folder(model).networks[0])
    assert len(list((model / "fold_0" / "stunet-deploy").iterdir())) == 2

    # a stunet-deploy link in the model folder: refused in one line, nothing written through it
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(model / "fold_0" / "stunet-deploy")
    (model / "fold_0" / "stunet-deploy").symlink_to(outside, target_is_directory=True)
    started = time.monotonic()
    done = predict("-i", folder["root"] / "in", "-o", tmp_path / "out", "-m", model, "--backend", "onnxruntime",
                   check=False)
    assert time.monotonic() - started < BOUND_S
    assert done.returncode == 1
    _one_error_line(done.stderr, "stunet-predict", "stunet-deploy", "symbolic link", "remove it")
    assert list(outside.iterdir()) == [] and not list((tmp_path / "out").glob("*.nii.gz"))


# -- 2. the exported graph and its sidecar --------------------------------------------------------------------------
def test_a_tampered_graph_of_the_same_size_is_refused(folder, tmp_path):
    shutil.copytree(folder["graph"].parent, tmp_path / "exported")
    graph = tmp_path / "exported" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-100] ^= 0x01  # a weight's bit: same size, another network
    graph.write_bytes(bytes(data))
    started = time.monotonic()
    done = predict("-i", folder["root"] / "in", "-o", tmp_path / "out", "-m", graph, check=False)
    assert time.monotonic() - started < BOUND_S and done.returncode == 1
    _one_error_line(done.stderr, "stunet-predict", str(graph), "SHA-256 differs", "export again")
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def _nan(side):
    side["spacing"][0] = math.nan


def _negative(side):
    side["spacing"][1] = -1.5


def _transpose(side):
    side["transpose_forward"] = [0, 0, 2]


def _classes(side):
    side["graph"]["output"]["shape"][1] = 5000


def _channels(side):
    side["graph"]["input"]["shape"][1] = 100


def _patch(side):
    side["patch_size"] = [4096, 4096, 4096]


def _ct_numbers(side):
    side["normalization"][0].update(scheme="CTNormalization", clip=[-1000, math.inf], mean=0.0, std=1.0)


def _plans_disagree(side):
    side["nnunet"]["plans"]["configurations"][side["nnunet"]["configuration"]]["spacing"] = [9.0, 9.0, 9.0]


@pytest.mark.parametrize("tamper, rule", [
    (_nan, "spacing"), (_negative, "spacing"), (_transpose, "transpose_forward"), (_classes, "number of classes"),
    (_channels, "number of input channels"), (_patch, "patch_size"), (_ct_numbers, "normalization[0].clip"),
    (_plans_disagree, "the plans' spacing")])
def test_every_sidecar_field_is_checked_before_anything_is_allocated(folder, tmp_path, tamper, rule):
    from stunet.deploy.sidecar import read_exported
    from stunet.errors import CheckpointError

    shutil.copytree(folder["graph"].parent, tmp_path / "exported")
    side = tmp_path / "exported" / "model.json"
    content = json.loads(side.read_text())
    tamper(content)
    side.write_text(json.dumps(content))
    with pytest.raises(CheckpointError) as error:
        read_exported(tmp_path / "exported" / "model.onnx")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{side}: ") and rule in message, message


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_sidecar_that_is_not_a_regular_file_is_refused_at_once(folder, tmp_path, kind):
    from stunet.deploy.sidecar import read_exported
    from stunet.errors import CheckpointError

    shutil.copy(folder["graph"], tmp_path / "model.onnx")
    side = tmp_path / "model.json"
    if kind == "fifo":
        os.mkfifo(side)
    else:
        side.symlink_to("/dev/zero")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading the sidecar hung"))
    signal.alarm(20)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_exported(tmp_path / "model.onnx")
    finally:
        signal.alarm(0)


# -- 3. stunet-export's inputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", ["0", "8", "99"])
def test_an_unsupported_opset_is_one_line(folder, tmp_path, opset):
    code, err = _export(folder["model"], "-o", tmp_path / "x" / "m.onnx", "--opset", opset)
    assert code == 2
    _one_error_line(err, "stunet-export", f"--opset {opset}", "9 to 20")
    assert not (tmp_path / "x").exists()


def _nan_spacing(plans):
    plans["configurations"]["3d_fullres"]["spacing"][0] = math.nan


def _negative_spacing(plans):
    plans["configurations"]["3d_fullres"]["spacing"][2] = -1.0


def _nan_ct(plans):
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization"]
    plans["foreground_intensity_properties_per_channel"] = {
        "0": {"mean": math.nan, "std": 100.0, "percentile_00_5": -1000.0, "percentile_99_5": 1000.0}}


def _huge_patch(plans):
    plans["configurations"]["3d_fullres"]["patch_size"] = [640, 640, 640]


@pytest.mark.parametrize("edit, rule", [(_nan_spacing, "spacing"), (_negative_spacing, "spacing"),
                                        (_nan_ct, "normalization[0].mean"), (_huge_patch, "patch_size")])
def test_a_model_folder_with_impossible_numbers_is_refused_before_export(folder, tmp_path, monkeypatch, edit, rule):
    from stunet.deploy import export

    def no_trace(*args, **kwargs):
        raise AssertionError("traced")

    monkeypatch.setattr(export, "_trace", no_trace)
    model = _copy_model(folder, tmp_path / "model", edit)
    started = time.monotonic()
    code, err = _export(model, "-o", tmp_path / "x" / "m.onnx")
    assert time.monotonic() - started < BOUND_S and code == 1
    _one_error_line(err, "stunet-export", str(model / "plans.json"), rule)
    assert not (tmp_path / "x").exists()


def test_an_export_beyond_the_available_memory_is_refused(folder, tmp_path, monkeypatch):
    from stunet.deploy import export

    monkeypatch.setattr(export, "available_memory", lambda: 2 ** 20)
    code, err = _export(folder["model"], "-o", tmp_path / "x" / "m.onnx")
    assert code == 1
    _one_error_line(err, "stunet-export", "GiB are available", "smaller --patch")
    assert not (tmp_path / "x").exists()


def test_the_sidecar_is_strict_json(folder):
    def refuse(constant):
        raise ValueError(f"{constant} in the sidecar")

    content = json.loads(folder["graph"].with_suffix(".json").read_text(), parse_constant=refuse)
    assert content["graph"]["external_data"] is None and content["graph"]["external_data_sha256"] is None
