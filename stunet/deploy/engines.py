"""The engines that run an exported graph on the CPU: ONNX Runtime and OpenVINO, with the precision set explicitly.

An :class:`Engine` runs one graph with a static input shape (one patch) and returns float32. It has the network's
``decode(x, all_stages=False)``, so the sliding window's mirroring (:meth:`stunet.prediction.sliding_window.Predictor.
_features`) flips the input and the output around the engine call exactly as it does around the network.

Precision (``--precision``), per backend:

- ``fp32`` (and ``auto``, which is fp32 on the CPU): ONNX Runtime computes in float32; OpenVINO is compiled with
  ``INFERENCE_PRECISION_HINT`` f32, always set explicitly, because OpenVINO picks bf16 by itself on CPUs that have it.
- ``bf16``: OpenVINO's bf16 inference precision, on CPUs whose OpenVINO capabilities list BF16 (avx512_bf16, AMX);
  refused elsewhere (OpenVINO would quietly compute in f32). ONNX Runtime has no bfloat16 mode on the CPU: refused.
- ``fp16``: OpenVINO's f16 inference precision where the CPU lists FP16 (avx512_fp16, AMX-FP16); refused elsewhere,
  and always by ONNX Runtime.

A graph is compiled once per process for a given file, precision and thread count, and reused by every tile, case and
:class:`~stunet.prediction.segmenter.Segmenter`; OpenVINO also keeps the compiled model in a cache folder beside the
exported graph, so later processes skip most of the compilation. Both engines use as many threads as torch does
(``torch.get_num_threads()``: the cores, or ``OMP_NUM_THREADS``).
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import torch

EXTRA = "deploy"
BACKENDS = ("torch", "onnxruntime", "openvino")
ENGINES = BACKENDS[1:]
PACKAGES = ("onnx", "onnxruntime", "openvino")
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def require(*packages: str) -> None:
    """Raise a one-line ImportError naming the first of ``packages`` (default: all of the deploy extra's) that is not
    installed, and the pip command that brings it."""
    for name in packages or PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"ONNX export and the onnxruntime/openvino backends need the optional package {name} "
                              f"(not installed): pip install \"stunet[{EXTRA}]\"") from e


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def engine_version(backend: str) -> str:
    """The engine's version (torch's for the torch backend), e.g. ``1.32.0``."""
    if backend == "torch":
        return torch.__version__
    require(backend)
    if backend == "onnxruntime":
        import onnxruntime
        return onnxruntime.__version__
    import openvino
    return openvino.__version__.split("-")[0]


def threads() -> int:
    return max(1, torch.get_num_threads())


_LOCK = threading.Lock()
_COMPILED: dict[tuple, object] = {}  # (backend, graph's SHA-256 or file, size, mtime, precision, threads) -> compiled
_CORE = None


def _openvino_core():
    global _CORE
    require("openvino")
    import openvino
    if _CORE is None:
        _CORE = openvino.Core()
    return _CORE


def cpu_capabilities() -> list[str]:
    """OpenVINO's optimisation capabilities of this CPU (e.g. FP32, BF16, INT8)."""
    return list(_openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def resolve_precision(backend: str, precision: str) -> str:
    """``precision`` as the engine runs it (``auto`` is fp32 on the CPU), or a ValueError saying why it is refused."""
    precision = "fp32" if precision in ("auto", None) else precision
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if precision == "fp32" or backend == "torch":
        return precision
    if backend == "onnxruntime":
        raise ValueError(f"the onnxruntime backend computes in fp32 on the CPU; --precision {precision} is not "
                         f"available with it (use --backend openvino, or torch)")
    if _CAPABILITY[precision] not in cpu_capabilities():
        raise ValueError(f"this CPU has no native {precision} for OpenVINO (capabilities: "
                         f"{', '.join(cpu_capabilities())}); use --precision fp32"
                         + (" or bf16" if precision == "fp16" and "BF16" in cpu_capabilities() else ""))
    return precision


def _type_name(element_type) -> str:
    """OpenVINO's short name of an element type (f32, bf16, f16)."""
    return element_type.get_type_name() if hasattr(element_type, "get_type_name") else str(element_type)


class Engine:
    """One exported graph compiled by ``backend`` at ``precision`` (``fp32``/``bf16``/``fp16``, see the module);
    ``sha256``, the graph's checksum where the caller has proven it, identifies the compiled graph within the
    process (else the file's path, size and modification time do)."""

    def __init__(self, backend: str, path: str | Path, precision: str = "fp32", cache_dir: str | Path | None = None,
                 num_threads: int | None = None, sha256: str | None = None):
        if backend not in ENGINES:
            raise ValueError(f"an engine is one of {', '.join(ENGINES)}, not {backend!r}")
        self.backend, self.path = backend, Path(path)
        self.precision = resolve_precision(backend, precision)
        self.version = engine_version(backend)
        self.threads = num_threads or threads()
        stat = self.path.stat()
        key = (backend, sha256 or (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns), self.precision,
               self.threads)
        with _LOCK:
            compiled = _COMPILED.get(key)
            if compiled is None:
                compiled = self._compile(cache_dir)
                _COMPILED[key] = compiled
        self._compiled = compiled
        if backend == "openvino":
            self._request = compiled.create_infer_request()  # one per engine: requests are not shared between threads
            self.setting = f"INFERENCE_PRECISION_HINT {_type_name(compiled.get_property('INFERENCE_PRECISION_HINT'))}"
        else:
            self._input = compiled.get_inputs()[0].name
            self.setting = "float32"

    def _compile(self, cache_dir):
        if self.backend == "onnxruntime":
            require("onnxruntime")
            import onnxruntime
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            return onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        core = _openvino_core()
        hint = OPENVINO_PRECISIONS[self.precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1}
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        compiled = core.compile_model(str(self.path), "CPU", config)
        granted = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if granted != hint:  # never a precision other than the one asked for
            raise ValueError(f"OpenVINO compiled {self.path.name} at {granted}, not the {hint} asked for")
        return compiled

    def run(self, array: np.ndarray) -> np.ndarray:
        """The graph's output for one input array (float32, the graph's input shape), as a new float32 array."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.backend == "onnxruntime":
            return self._compiled.run(None, {self._input: array})[0]
        return self._request.infer({0: array}, share_inputs=True, share_outputs=True)[0].copy()

    def decode(self, x: torch.Tensor, all_stages: bool = False) -> list[torch.Tensor]:
        """What :meth:`stunet.models.network.STUNet.decode` returns for the last stage: ``[output]``, on the CPU."""
        if all_stages:
            raise ValueError("an exported graph gives its last output only")
        return [torch.from_numpy(self.run(x.detach().cpu().numpy()))]

    def describe(self) -> dict:
        return {"backend": self.backend, "version": self.version, "precision": self.precision,
                "setting": self.setting, "threads": self.threads}


def describe_backend(backend: str, precision: str, engines: list[Engine] | None = None) -> dict:
    """The provenance record's ``engine``: backend, its version, the precision it ran at (and the engine's setting)."""
    if engines:
        return engines[0].describe()
    return {"backend": backend, "version": engine_version(backend), "precision": precision,
            "threads": torch.get_num_threads()}


def clear_compiled() -> None:
    """Forget the compiled graphs of this process (tests; a changed file is recompiled anyway)."""
    with _LOCK:
        _COMPILED.clear()


SPEEDS = ("exact", "fastest")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX), where torch's bf16 is fast; elsewhere it is
    emulated and many times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def installed(backend: str) -> bool:
    """Whether ``backend`` runs here: torch always; an engine with its package and onnx (which exports the graph)."""
    if backend == "torch":
        return True
    return all(importlib.util.find_spec(name) is not None for name in (backend, "onnx"))


def openvino_capabilities() -> list[str]:
    """:func:`cpu_capabilities`, or none where OpenVINO is not installed."""
    return cpu_capabilities() if installed("openvino") else []


def fastest_engine(device_type: str, backends: set[str], capabilities: list[str], bf16: bool,
                   graph_only: bool = False) -> tuple[str, str, str]:
    """``(backend, precision, why)``: the fastest engine and precision among ``backends`` (those installed) on a
    device of ``device_type``, given OpenVINO's ``capabilities`` of the CPU and whether it has native bfloat16
    (``bf16``); ``graph_only`` where the model is an exported graph (no torch). Measured on a 2-core AVX-512 CPU with
    native bf16 (docs/performance.md): OpenVINO bf16 0.46×, torch bf16 0.57×, OpenVINO fp32 0.74× the time of torch
    fp32; ONNX Runtime is slower than torch."""
    if device_type == "cuda" and not graph_only:
        return "torch", "fp16", "CUDA: torch with fp16 mixed precision"
    if "openvino" in backends:
        if "BF16" in capabilities:
            return "openvino", "bf16", "OpenVINO installed, CPU with native bf16"
        return "openvino", "fp32", "OpenVINO installed, CPU without native bf16"
    if graph_only:
        return "onnxruntime", "fp32", "an exported graph without OpenVINO: ONNX Runtime"
    if bf16:
        return "torch", "bf16", "no OpenVINO, CPU with native bf16: torch bf16"
    return "torch", "fp32", "no OpenVINO, CPU without native bf16: torch fp32"
