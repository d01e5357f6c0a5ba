"""Deployment (issue 27): stunet-export writes a checked ONNX graph with its sidecar; --backend onnxruntime/openvino
run the same pipeline as torch with the network replaced by the engine (same features, mirroring included), with the
export cached and the precision explicit; an exported file predicts with -m OUT.onnx; the documented example runs.

Needs the deploy extra (pip install ".[deploy]"); skipped, with that reason, without it."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from predict_helpers import labels_of, make_model_folder, predict, write_cases

MISSING = [name for name in ("onnx", "onnxruntime", "openvino") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the deploy extra is not installed ({', '.join(MISSING)} "
                                                      f"missing): pip install \".[deploy]\"")
ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 1-channel and a 2-channel model folder (16×32×32 patches: anisotropic), cases, and torch's labels."""
    import stunet
    from stunet.deploy.engines import clear_compiled

    clear_compiled()
    root = tmp_path_factory.mktemp("deploy")
    one = make_model_folder(root / "model")
    two = make_model_folder(root / "model2", channels=2, seed=1)
    write_cases(root / "in", 1)
    write_cases(root / "in2", 1, channels=2)
    torch_one = stunet.Segmenter.from_model_folder(one, device="cpu")
    reference = torch_one.predict([root / "in" / "case0_0000.nii.gz"], warn=False).labels
    return {"root": root, "one": one, "two": two, "torch": torch_one, "reference": reference}


@pytest.fixture(scope="module")
def exported(setup) -> Path:
    """stunet-export of the 1-channel model with the plans' patch: model.onnx and model.json."""
    from stunet.cli.export import main
    graph = setup["root"] / "exported" / "example" / "model.onnx"
    main([str(setup["one"]), "-o", str(graph)])
    return graph


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.mean(ours == theirs))


def _export(setup, name="s", *extra) -> Path:
    out = setup["root"] / "exported" / f"{name}.onnx"
    from stunet.cli.export import main
    main([str(setup["one"]), "-f", "0", "-o", str(out), *extra])
    return out


# -- the export -----------------------------------------------------------------------------------------------------
def test_export_writes_a_checked_logits_graph_and_its_sidecar(setup, capsys):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from stunet.deploy.cache import file_sha256
    from stunet.deploy.export import TOLERANCE
    from stunet.prediction.model import load_model_folder

    out = _export(setup, "s", "--patch", "16", "32", "64", "--opset", "17")
    assert "largest difference from PyTorch" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.json", "s.onnx"]  # nothing left half-written
    onnx.checker.check_model(str(out), full_check=True)
    graph = onnx.load(str(out))
    assert [o.name for o in graph.graph.output] == ["logits"]  # deep-supervision heads dropped
    assert graph.opset_import[0].version == 17
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["patch_size"] == [16, 32, 64] and side["graph"]["input"]["shape"] == [1, 1, 16, 32, 64]
    assert side["graph"]["output"]["shape"] == [1, 5, 16, 32, 64]
    assert side["spacing"] == [1.5, 1.5, 1.5] and side["transpose_forward"] == [0, 1, 2]
    assert side["normalization"][0]["scheme"] == "ZScoreNormalization" and "formula" in side["normalization"][0]
    assert side["channel_names"] == {"0": "channel0"}
    assert side["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left",
                              "4": "kidney_right"}
    checkpoint = setup["one"] / "fold_0" / "checkpoint_final.pth"
    assert side["source"]["sha256"] == file_sha256(checkpoint)
    assert side["graph"]["sha256"] == file_sha256(out)
    assert side["exported_with"]["torch"] == torch.__version__ and side["exported_with"]["opset"] == 17
    check = side["exported_with"]["check"]
    assert check["max_abs_difference"] <= TOLERANCE * max(1, check["max_abs_reference"]) == check["tolerance"]
    assert side["nnunet"]["plans"]["configurations"][side["nnunet"]["configuration"]]["patch_size"] == [16, 32, 64]

    network = load_model_folder(setup["one"]).networks[0]  # the graph gives the network's logits
    x = np.random.default_rng(3).standard_normal((1, 1, 16, 32, 64), dtype=np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(x)).numpy()
    ours = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.abs(ours - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_export_of_a_checkpoint_file_uses_its_model_folder(setup):
    from stunet.cli.export import main
    out = setup["root"] / "exported" / "from_file.onnx"
    main([str(setup["one"] / "fold_0" / "checkpoint_final.pth"), "-o", str(out), "--check-with", "openvino"])
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["patch_size"] == [16, 32, 32] and side["exported_with"]["check"]["engine"].startswith("openvino")


def test_export_refuses_a_graph_beyond_the_tolerance(setup, monkeypatch, tmp_path):
    from stunet.deploy import export
    from stunet.prediction.model import load_model_folder

    network = load_model_folder(setup["one"]).networks[0]
    real = export.Engine.run
    monkeypatch.setattr(export.Engine, "run", lambda self, array: real(self, array) + 1.0)
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        export.export_graph(network, tmp_path / "bad.onnx", [16, 32, 32])
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_patch_the_network_cannot_take(setup, tmp_path):
    from stunet.deploy.export import export_graph
    from stunet.prediction.model import load_model_folder

    network = load_model_folder(setup["one"]).networks[0]
    with pytest.raises(ValueError, match="not divisible"):
        export_graph(network, tmp_path / "x.onnx", [16, 30, 32])


def test_the_sidecar_carries_ct_normalisation_numbers():
    from stunet.deploy.sidecar import normalization
    plans = {"configurations": {"3d_fullres": {"normalization_schemes": ["CTNormalization", "ZScoreNormalization"],
                                               "use_mask_for_norm": [False, True]}},
             "foreground_intensity_properties_per_channel": {
                 "0": {"mean": 80.5, "std": 120.0, "percentile_00_5": -990.0, "percentile_99_5": 1450.0}, "1": {}}}
    ct, mr = normalization(plans, "3d_fullres", {"0": "CT", "1": "T1"})
    assert ct == {"channel": 0, "name": "CT", "scheme": "CTNormalization", "use_mask": False, "clip": [-990.0, 1450.0],
                  "mean": 80.5, "std": 120.0, "formula": "x = (clip(x, clip[0], clip[1]) - mean) / max(std, 1e-8)"}
    assert mr["scheme"] == "ZScoreNormalization" and mr["use_mask"] is True and mr["name"] == "T1"


# -- the backends ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ENGINES)
def test_an_engine_gives_torchs_features_with_mirroring(setup, backend):
    import stunet
    seg = stunet.Segmenter.from_model_folder(setup["one"], backend=backend)
    predictor, reference = seg.predictor, setup["torch"].predictor
    assert predictor.mirror_axes == reference.mirror_axes == (0, 1, 2)
    tile = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 1, 16, 32, 32), dtype=np.float32))
    with torch.inference_mode():
        ours = predictor._features(predictor.runners[0], tile)
        theirs = reference._features(reference.model.networks[0], tile)
    assert ours.shape == theirs.shape == (1, 16, 16, 32, 32)
    assert (ours - theirs).abs().max() <= 1e-3 * theirs.abs().max()


@pytest.mark.parametrize("backend", ENGINES)
def test_a_backend_segments_like_torch(setup, backend):
    import stunet
    seg = stunet.Segmenter.from_model_folder(setup["one"], backend=backend)
    labels = seg.predict([setup["root"] / "in" / "case0_0000.nii.gz"], warn=False).labels
    assert _agreement(labels, setup["reference"]) >= 0.999
    engine = seg.provenance()["options"]["engine"]
    assert engine["backend"] == backend and engine["precision"] == "fp32" and engine["version"]
    assert seg.provenance()["options"]["backend"] == backend


@pytest.mark.parametrize("backend", ENGINES)
def test_two_channels_and_an_anisotropic_patch(setup, backend):
    import stunet
    files = [setup["root"] / "in2" / f"case0_{c:04d}.nii.gz" for c in range(2)]
    theirs = stunet.Segmenter.from_model_folder(setup["two"], device="cpu", mirroring=False).predict(files,
                                                                                                     warn=False)
    seg = stunet.Segmenter.from_model_folder(setup["two"], backend=backend, mirroring=False)
    assert seg.predictor.runners[0].run(np.zeros((1, 2, 16, 32, 32), np.float32)).shape == (1, 16, 16, 32, 32)
    ours = seg.predict(files, warn=False)
    assert _agreement(ours.labels, theirs.labels) >= 0.999


def test_the_export_is_cached_beside_the_weights_and_reused(setup, monkeypatch):
    import stunet
    from stunet.deploy import engines, export
    from stunet.deploy.cache import file_sha256, weights_sha256
    from stunet.prediction.model import load_model_folder

    stunet.Segmenter.from_model_folder(setup["one"], backend="openvino")  # exported by an earlier test or now
    sha = weights_sha256(load_model_folder(setup["one"]).networks[0])
    entries = list((setup["one"] / "fold_0" / "stunet-deploy").iterdir())
    entry = setup["one"] / "fold_0" / "stunet-deploy" / f"{sha[:16]}-16x32x32"
    assert entries == [entry]  # one copy of the graph, whichever engines ran it
    assert (entry / "features.onnx").is_file()
    assert any((entry / f"openvino-{engines.engine_version('openvino')}").iterdir())  # OpenVINO's compiled model
    record = json.loads((entry / "export.json").read_text())
    assert record["output"] == "features" and record["weights_sha256"] == sha
    assert record["files"]["features.onnx"]["sha256"] == file_sha256(entry / "features.onnx")
    assert f"openvino {engines.engine_version('openvino')}" in record["checks"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported or checked again")

    monkeypatch.setattr(export, "export_graph", no_export)
    monkeypatch.setattr(export, "compare", no_export)
    stunet.Segmenter.from_model_folder(setup["one"], backend="openvino")


def test_an_unwritable_weights_folder_caches_in_the_users_cache(setup, monkeypatch, tmp_path):
    import stunet
    from stunet.deploy import cache

    model = make_model_folder(tmp_path / "readonly", seed=2)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    monkeypatch.setattr(cache, "writable", lambda folder: str(tmp_path / "readonly") not in str(folder))
    seg = stunet.Segmenter.from_model_folder(model, backend="onnxruntime", mirroring=False)
    assert not (model / "fold_0" / "stunet-deploy").exists()
    assert seg.predictor.runners[0].path.is_relative_to(tmp_path / "user_cache" / "stunet" / "deploy")


def test_precision_is_explicit_and_refused_where_an_engine_lacks_it(exported):
    from stunet.deploy.engines import Engine, cpu_capabilities, resolve_precision

    graph = exported
    assert Engine("openvino", graph, "fp32").setting == "INFERENCE_PRECISION_HINT f32"  # never OpenVINO's default
    assert Engine("openvino", graph, "auto").precision == "fp32"
    capabilities = cpu_capabilities()
    if "BF16" in capabilities:
        assert Engine("openvino", graph, "bf16").setting == "INFERENCE_PRECISION_HINT bf16"
    else:
        with pytest.raises(ValueError, match="no native bf16"):
            resolve_precision("openvino", "bf16")
    if "FP16" not in capabilities:
        with pytest.raises(ValueError, match="no native fp16"):
            resolve_precision("openvino", "fp16")
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValueError, match="onnxruntime backend computes in fp32"):
            resolve_precision("onnxruntime", precision)
    assert resolve_precision("onnxruntime", "auto") == "fp32"


def test_engines_run_on_the_cpu_only(setup):
    import stunet
    with pytest.raises(ValueError, match="runs on the CPU"):
        stunet.Segmenter.from_model_folder(setup["one"], backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        stunet.Segmenter.from_model_folder(setup["one"], backend="tensorrt")


def test_a_missing_engine_is_named_in_one_line(setup, monkeypatch):
    import stunet
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError) as error:
        stunet.Segmenter.from_model_folder(setup["one"], backend="openvino")
    message = str(error.value)
    assert "\n" not in message and "openvino" in message and 'pip install "stunet[deploy]"' in message


# -- the command ----------------------------------------------------------------------------------------------------
def test_the_command_with_a_backend_and_with_an_exported_file(setup, exported):
    root, graph = setup["root"], exported
    predict("-i", root / "in", "-o", root / "out_openvino", "-m", setup["one"], "--backend", "openvino")
    run = json.loads((root / "out_openvino" / "provenance.json").read_text())
    assert run["options"]["backend"] == "openvino" and run["options"]["engine"]["precision"] == "fp32"
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", run["options"]["engine"]["version"])
    labels = labels_of(root / "out_openvino" / "case0.nii.gz")
    reference = labels_of_segmenter(setup)
    assert _agreement(labels, reference) >= 0.999

    predict("-i", root / "in", "-o", root / "out_onnx", "-m", graph)  # the logits graph, blended
    run = json.loads((root / "out_onnx" / "provenance.json").read_text())
    assert run["options"]["backend"] == "onnxruntime" and run["options"]["engine"]["backend"] == "onnxruntime"
    assert _agreement(labels_of(root / "out_onnx" / "case0.nii.gz"), reference) >= 0.999

    refused = predict("-i", root / "in", "-o", root / "out_x", "-m", graph, "--backend", "torch", check=False)
    assert refused.returncode == 1 and "not torch" in refused.stderr.strip().splitlines()[-1]
    refused = predict("-i", root / "in", "-o", root / "out_x", "-m", setup["one"], "--backend", "onnxruntime",
                      "--precision", "bf16", check=False)
    assert refused.returncode == 1 and "computes in fp32" in refused.stderr


def labels_of_segmenter(setup) -> np.ndarray:
    """torch's labels of case0 on the input's grid, as the command writes them."""
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(setup["torch"](setup["root"] / "in" / "case0_0000.nii.gz"))


# -- the documented example -----------------------------------------------------------------------------------------
def _documented_example() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    marker = "<!-- tested by tests/test_deploy.py::test_the_documented_example_runs -->"
    block = text.split(marker, 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_the_documented_example_runs(setup, exported, monkeypatch):
    """The docs' numpy + onnxruntime code, as written, segments like the PyTorch network tiled the same way."""
    from stunet.prediction.model import load_model_folder

    monkeypatch.chdir(exported.parent)
    namespace: dict = {}
    exec(compile(_documented_example(), "docs/deployment.md", "exec"), namespace)
    assert namespace["names"][1] == "liver"
    volume = np.random.default_rng(7).normal(40, 30, (20, 40, 50)).astype(np.float32)
    ours = namespace["segment"]([volume])
    assert ours.shape == volume.shape

    network = load_model_folder(setup["one"]).networks[0]
    image = (volume - volume.mean()) / volume.std()
    padded = np.pad(image, [(0, -s % p) for s, p in zip(image.shape, (16, 32, 32))])[None, None]
    expected = np.zeros(padded.shape[2:], dtype=np.int64)
    with torch.inference_mode():
        for tile in np.ndindex(2, 2, 2):
            window = tuple(slice(i * p, (i + 1) * p) for i, p in zip(tile, (16, 32, 32)))
            expected[window] = network(torch.from_numpy(padded[(0, 0, *window)][None, None].copy()))[0].argmax(0)
    assert _agreement(ours, expected[:20, :40, :50]) >= 0.999
