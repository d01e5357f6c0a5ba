"""Deployment outside PyTorch: an STU-Net as an ONNX graph (:mod:`.export`: the logits graph ``stunet-export``
writes, the features graph prediction blends, both checked against PyTorch before they are written), the sidecar that
says how to use a graph without this package (:mod:`.sidecar`), the exported graphs cached beside the weights
(:mod:`.cache`), and the engines that run them on the CPU (:mod:`.engines`: ONNX Runtime and OpenVINO, with explicit
precision, compiled once per process).

The sliding window (:mod:`stunet.prediction.sliding_window`) calls an engine where it would call the network, so this
room sits below prediction. onnx, onnxruntime and openvino are the ``deploy`` extra: imported inside functions only,
after :func:`.engines.require`.

May import: :mod:`stunet.nnunet`, :mod:`stunet.clinical`, :mod:`stunet.weights`, :mod:`stunet.models` and the base
modules; never :mod:`stunet.prediction` or :mod:`stunet.cli`.
"""
