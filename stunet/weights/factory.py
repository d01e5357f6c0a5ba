"""``create_model``: the one door to every model, registered (:mod:`stunet.models.registry`) or released with its
weights (:mod:`stunet.weights.pretrained`)."""
from __future__ import annotations

from torch import nn

from stunet.models.registry import list_models, model_builder


def create_model(name: str, pretrained: str | bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model, or a released one by its tagged name ('stunet_large.totalseg104').

    ``kwargs`` go to the builder (for the STU-Net presets: in_channels, num_classes, strides, kernel_sizes, depths,
    widths, depth_multiplier, width_multiplier, deep_supervision, activation_checkpointing). With ``pretrained`` the
    architecture follows the released model's config unless overridden, the weights are loaded, and the config is
    attached as ``model.pretrained_config``: ``pretrained=True`` takes the released checkpoint from the cache,
    downloading it on first use (see :mod:`stunet.weights.hub`); ``pretrained=FILE`` reads that file (any supported format).
    ``trust_checkpoint=True`` allows pickled objects beyond tensors (never implied by a download).
    """
    if pretrained is False:
        pretrained = None
    if name in list_models() and pretrained is None:
        return model_builder(name)(**kwargs)
    from stunet.weights.pretrained import create_pretrained, get_pretrained_config  # checkpoint I/O only when asked for
    if pretrained is not None and name in list_models():  # a model name: the release follows from the file, or is unique
        return create_pretrained(name, None, pretrained, **kwargs)
    try:
        config = get_pretrained_config(name)
    except ValueError as e:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}" if name not in list_models()
                         else str(e)) from None
    if pretrained is None:
        return model_builder(config.model)(**{**config.architecture, **kwargs})
    return create_pretrained(config.name, model_builder(config.model), pretrained, **kwargs)
