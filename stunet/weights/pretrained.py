"""The released models as the weights room names them: the model registry's release lookups
(:mod:`stunet.models.registry`, which holds each model's releases beside its builder) under their weights names, and
:func:`configs_matching`, the releases of a checkpoint's architecture."""
from __future__ import annotations

from stunet.models.registry import get_release as get_pretrained_config
from stunet.models.registry import list_releases as list_pretrained
from stunet.models.registry import register_release as register_pretrained_config
from stunet.models.registry import release_network_config
from stunet.models.registry import unregister_release as unregister_pretrained_config
from stunet.models.release import PretrainedConfig

__all__ = ["PretrainedConfig", "configs_matching", "get_pretrained_config", "list_pretrained",
           "register_pretrained_config", "unregister_pretrained_config"]


def configs_matching(arch: dict) -> list[PretrainedConfig]:
    """The released models of an architecture (depths, widths, kernels, channels and classes, as
    :func:`stunet.weights.transfer.architecture_of` gives them)."""
    found = []
    for name in list_pretrained():
        config = get_pretrained_config(name)
        net = release_network_config(config)
        if (list(net.depths), list(net.widths), [list(k) for k in net.kernel_sizes], net.in_channels,
                net.num_classes) == (arch["depths"], arch["widths"], arch["kernel_sizes"], arch["in_channels"],
                                     arch["num_classes"]):
            found.append(config)
    return found
