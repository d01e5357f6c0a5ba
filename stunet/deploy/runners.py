"""The engines of a loaded model for the sliding window: one per network, each running the graph of the features
the sliding window blends (exported, checked and cached on first use by :mod:`stunet.deploy.cache`), or for an
exported ONNX file (:class:`stunet.deploy.sidecar.GraphNetwork`) its own graph, the logits."""
from __future__ import annotations

from itertools import zip_longest

import torch

from stunet.deploy.cache import FOLDER, cached_features_graph, refuse_links, user_cache_root, writable
from stunet.deploy.engines import Engine, check_backend, engine_version, require, resolve_precision
from stunet.deploy.sidecar import GraphNetwork


def feature_engines(model, backend: str, precision: str, device: str | torch.device = "cpu") -> list[Engine]:
    """One engine per network of ``model`` (a :class:`stunet.prediction.model.Model`), each running the graph of the
    features the sliding window blends, exported and checked once and cached (:mod:`stunet.deploy.cache`); an ONNX
    model (:class:`stunet.deploy.sidecar.GraphNetwork`) runs its own graph, the logits."""
    check_backend(backend)
    if backend == "torch":
        raise ValueError("the torch backend runs the networks themselves, not engines")
    if torch.device(device).type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU here; use device cpu (or --backend torch on "
                         f"{device})")
    require(backend)  # onnx itself is imported only to export (stunet.deploy.export), not on a cached graph
    precision = resolve_precision(backend, precision)  # refused before anything is exported
    patch = [int(p) for p in model.configuration_manager.patch_size]
    engines = []
    for network, checkpoint in zip_longest(model.networks, model.checkpoints[:len(model.networks)]):
        if isinstance(network, GraphNetwork):  # OpenVINO's compiled model beside the file, or in the user's cache
            beside = network.path.parent / FOLDER / backend
            refuse_links(beside.parent, beside)
            compiled = beside if writable(beside) else user_cache_root() / backend
            engines.append(Engine(backend, network.path, precision, compiled if backend == "openvino" else None,
                                  sha256=network.sha256))
            continue
        graph, compiled, sha = cached_features_graph(network, checkpoint, patch, backend, engine_version(backend))
        engines.append(Engine(backend, graph, precision, compiled if backend == "openvino" else None, sha256=sha))
    return engines
