"""An STU-Net as an ONNX graph, checked against PyTorch before it is written.

Two graphs of one network, both with a static input of one patch, ``(1, channels, *patch)`` float32:

- ``logits``: the full-resolution head's logits, ``(1, classes, *patch)`` (deep-supervision heads dropped): what
  ``stunet-export`` writes, for use outside this package (with the sidecar, :mod:`stunet.deploy.sidecar`);
- ``features``: the last decoder stage's features, ``(1, width, *patch)``, which prediction blends before the head
  (:mod:`stunet.prediction.sliding_window`); cached by :mod:`stunet.deploy.cache`.

The 1×1 convolutions, which PyTorch runs as matrix products on the CPU (:func:`stunet.models.blocks.pointwise`), are
exported as ONNX ``Conv`` nodes, which the engines fuse with their neighbours.

Before anything is written the graph passes ONNX's checker and is run once on a random patch (standard normal, like
a normalised image) by an engine in fp32, and compared with PyTorch's float32 output: the largest absolute difference
must stay within :data:`TOLERANCE` times the largest absolute value of PyTorch's output (or times 1, if that is
smaller); a graph beyond it is refused (:class:`ExportError`). Measured on STU-Net-S's features at 128³ (values up
to about 6, so an allowance of 0.06): 4e-4 with ONNX Runtime and 3e-3 with OpenVINO, whose convolutions round
differently; a wrong graph (a misplaced axis, a dropped layer) is off by the size of the values themselves.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from stunet.atomic import atomic_write
from stunet.deploy.engines import Engine, engine_version, require
from stunet.models.memory import GIB, PredictionMemory, available_memory
from stunet.models.network import STUNet

TOLERANCE = 1e-2  # of max(1, the largest |value| of PyTorch's output)
DEFAULT_OPSET = 17
#: the opsets an STU-Net exports to: below 9 ONNX has no upsampling PyTorch can write, above 20 PyTorch's
#: TorchScript exporter writes none
OPSETS = range(9, 21)
OUTPUTS = ("logits", "features")
INPUT_NAME = "image"


class ExportError(ValueError):
    """The exported graph disagrees with PyTorch beyond the tolerance (or cannot be exported)."""


class _Graph(nn.Module):
    """The part of ``network`` that is exported: up to the last decoder stage's features, and the last head."""

    def __init__(self, network: STUNet, output: str):
        super().__init__()
        self.network, self.output = network, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.network.decode(x, all_stages=False)[0]
        return features if self.output == "features" else self.network.seg_outputs[-1](features)


@contextlib.contextmanager
def _modules_as_modules():
    """While exporting, every 1×1 convolution runs as its module (an ONNX Conv), not as a matrix product: a no-op
    global forward hook is what makes :func:`stunet.models.blocks.runs_as_module` say so."""
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, output: None)
    try:
        yield
    finally:
        handle.remove()


def check_patch(network: STUNet, patch: Sequence[int]) -> list[int]:
    patch = [int(p) for p in patch]
    if len(patch) != network.config.spatial_dims:
        raise ValueError(f"the patch {patch} has {len(patch)} axes; the network is {network.config.spatial_dims}D")
    if any(p < 1 for p in patch):
        raise ValueError(f"the patch {patch} must have at least one voxel along each axis")
    network.check_input(torch.empty((1, network.config.in_channels, *patch), device="meta"))
    return patch


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or isinstance(opset, bool) or opset not in OPSETS:
        raise ValueError(f"ONNX opset {opset!r} is not supported: use {OPSETS.start} to {OPSETS.stop - 1} (default "
                         f"{DEFAULT_OPSET})")
    return opset


def export_memory(network: STUNet, patch: Sequence[int]) -> int:
    """Bytes exporting and checking ``network`` at ``patch`` takes beyond the loaded network: one tile's prediction
    (:class:`stunet.models.memory.PredictionMemory`: a forward pass and its input and output) and two more copies of
    the weights (the traced graph, and the engine's)."""
    weights = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    memory = PredictionMemory(network.config.in_channels, [network.config.widths[0]], list(patch))
    return memory.estimate(list(patch), list(patch)) + 2 * weights


def check_memory(network: STUNet, patch: Sequence[int]) -> None:
    """ExportError, before anything is allocated, where :func:`export_memory` exceeds the memory available."""
    needed, available = export_memory(network, patch), available_memory()
    if available is not None and needed > available:
        raise ExportError(f"exporting at the patch {list(patch)} needs about {needed / GIB:.1f} GiB (a forward pass "
                          f"of one patch, and the graph), but {available / GIB:.1f} GiB are available; export a "
                          f"smaller --patch")


def _trace(network: STUNet, path: Path, patch: list[int], output: str, opset: int) -> None:
    device = next(network.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"export a network on the CPU (this one is on {device})")
    was_training, deep_supervision = network.training, network.deep_supervision
    network.eval()
    example = torch.zeros((1, network.config.in_channels, *patch))
    try:
        with warnings.catch_warnings(), _modules_as_modules(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks and instance norm
            torch.onnx.export(_Graph(network, output), (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[output], do_constant_folding=True)
    except Exception as e:
        raise ExportError(f"PyTorch could not export the network to ONNX (opset {opset}): "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    finally:
        network.train(was_training)
        network.deep_supervision = deep_supervision


def reference_output(network: STUNet, x: np.ndarray, output: str) -> np.ndarray:
    """PyTorch's float32 output of the graph's part of ``network`` for one input array."""
    with torch.inference_mode():
        return _Graph(network, output)(torch.from_numpy(x)).float().numpy()


def compare(path: Path, network: STUNet, patch: list[int], output: str, backend: str, seed: int = 0) -> dict:
    """Run the graph at ``path`` once with ``backend`` in fp32 on a random patch and compare with PyTorch: the check
    record (engine, largest difference, largest reference value, allowed difference)."""
    x = np.random.default_rng(seed).standard_normal((1, network.config.in_channels, *patch), dtype=np.float32)
    reference = reference_output(network, x, output)
    ours = Engine(backend, path, "fp32").run(x)
    if ours.shape != reference.shape:
        raise ExportError(f"the exported graph gives shape {ours.shape}, PyTorch {reference.shape}")
    difference = float(np.max(np.abs(ours - reference)))
    scale = float(np.max(np.abs(reference)))
    record = {"engine": f"{backend} {engine_version(backend)} (fp32)", "input": "standard normal, seed 0",
              "max_abs_difference": difference, "max_abs_reference": scale,
              "tolerance": TOLERANCE * max(1.0, scale)}
    if not difference <= record["tolerance"]:  # NaN fails too
        raise ExportError(f"the exported graph differs from PyTorch by up to {difference:.3g} on a random patch "
                          f"(values up to {scale:.3g}; allowed {record['tolerance']:.3g}); not written")
    return record


def _store(traced_folder: Path, target: Path) -> None:
    """Put the traced graph at ``target``: as it is, or with every weight in one file ``target.name + '.data'`` when
    the exporter spread them over several files (graphs over 2 GB)."""
    files = list(traced_folder.iterdir())
    graph = traced_folder / "graph.onnx"
    if len(files) == 1:
        shutil.move(str(graph), str(target))
        return
    require("onnx")
    import onnx
    model = onnx.load(str(graph), load_external_data=True)
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=target.name + ".data")


def export_graph(network: STUNet, target: str | Path, patch: Sequence[int], output: str = "logits",
                 opset: int = DEFAULT_OPSET, check_with: str = "onnxruntime") -> dict:
    """Export ``network`` (on the CPU) as the ``output`` graph for ``patch``, check it (ONNX's checker, then
    :func:`compare` with the ``check_with`` engine) and write it atomically at ``target``. The patch, the opset
    (:data:`OPSETS`) and the memory it takes (:func:`check_memory`) are checked before anything is traced. Returns
    the check record and what was exported (opset, versions)."""
    if output not in OUTPUTS:
        raise ValueError(f"output is one of {', '.join(OUTPUTS)}, not {output!r}")
    require("onnx", check_with)
    import onnx
    patch = check_patch(network, patch)
    check_opset(opset)
    check_memory(network, patch)
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="stunet-export-") as tmp:
        traced = Path(tmp) / "graph"
        traced.mkdir()
        _trace(network, traced / "graph.onnx", patch, output, opset)
        try:
            onnx.checker.check_model(str(traced / "graph.onnx"), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported graph fails ONNX's checker: {str(e).strip().splitlines()[0]}") from e
        check = compare(traced / "graph.onnx", network, patch, output, check_with)
        atomic_write(target, lambda path: _store(traced, path))
    return {"output": output, "patch_size": patch, "opset": opset, "torch": torch.__version__,
            "onnx": onnx.__version__, "check": check, "external_data": (target.name + ".data")
            if Path(str(target) + ".data").exists() else None}
