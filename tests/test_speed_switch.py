"""``--speed fastest`` / ``Segmenter(speed="fastest")``: the fastest backend and precision installed, picked by
:func:`stunet.deploy.engines.fastest_engine`, said in one line and recorded in provenance.json."""
import json

import pytest

from stunet.deploy.engines import fastest_engine


@pytest.mark.parametrize("device, backends, capabilities, bf16, graph_only, expected", [
    ("cuda", {"torch", "openvino"}, ["FP32", "BF16"], True, False, ("torch", "fp16")),
    ("cpu", {"torch", "onnxruntime", "openvino"}, ["FP32", "BF16", "INT8"], True, False, ("openvino", "bf16")),
    ("cpu", {"torch", "openvino"}, ["FP32", "INT8"], False, False, ("openvino", "fp32")),
    ("cpu", {"torch", "onnxruntime"}, [], True, False, ("torch", "bf16")),
    ("cpu", {"torch"}, [], False, False, ("torch", "fp32")),
    ("cpu", {"torch", "onnxruntime"}, [], True, True, ("onnxruntime", "fp32")),
    ("cuda", {"torch", "onnxruntime", "openvino"}, ["FP32"], False, True, ("openvino", "fp32")),
])
def test_choice(device, backends, capabilities, bf16, graph_only, expected):
    backend, precision, why = fastest_engine(device, backends, capabilities, bf16, graph_only)
    assert (backend, precision) == expected and why


def test_fastest_refuses_a_backend_or_precision_given_with_it(model_folder):
    from stunet.prediction.segmenter import Segmenter

    for extra in ({"backend": "onnxruntime"}, {"precision": "fp32"}):
        with pytest.raises(ValueError, match="chooses the backend and precision"):
            Segmenter(model_folder=model_folder, device="cpu", speed="fastest", **extra)
    with pytest.raises(ValueError, match="unknown speed"):
        Segmenter(model_folder=model_folder, device="cpu", speed="fast")


def test_command_says_and_records_its_choice(model_folder, tmp_path):
    from predict_helpers import predict, write_cases
    from stunet.deploy.engines import installed, native_bf16, openvino_capabilities

    write_cases(tmp_path / "in", 1)
    done = predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model_folder, "--device", "cpu",
                   "--speed", "fastest", "--disable-tta")
    backend, precision, why = fastest_engine("cpu", {b for b in ("torch", "onnxruntime", "openvino") if installed(b)},
                                             openvino_capabilities(), native_bf16())
    line = f"stunet-predict: --speed fastest: {backend} {precision} ({why})"
    assert line in done.stderr
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    options = record["options"]
    assert options["speed"] == "fastest" and options["speed_choice"] == f"{backend} {precision} ({why})"
    assert (options["backend"], options["precision"]) == (backend, precision)
    assert record["cases"]["case0"]["skipped_tiles"] == 0  # the test model is not a CT model
    assert (tmp_path / "out" / "case0.nii.gz").exists()
