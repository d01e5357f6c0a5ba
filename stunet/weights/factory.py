"""``create_model``: the one door to every model of the registry (:mod:`stunet.models.registry`), built by its
builder or as one of its releases, with the release's weights loaded by :mod:`stunet.weights.loading`."""
from __future__ import annotations

from torch import nn

from stunet.models.registry import get_release, list_models, model_builder


def create_model(name: str, pretrained: str | bool | None = None, *, trust_checkpoint: bool = False,
                 **kwargs) -> nn.Module:
    """Build a registered model, or a released one by its tagged name ('stunet_large.totalseg104').

    ``kwargs`` go to the builder (for the STU-Net presets: in_channels, num_classes, strides, kernel_sizes, depths,
    widths, depth_multiplier, width_multiplier, deep_supervision, activation_checkpointing). With ``pretrained`` the
    architecture follows the released model's config unless overridden, the weights are loaded
    (:func:`stunet.weights.loading.load_pretrained`), and the config is attached as ``model.pretrained_config``, the
    load's report as ``model.load_report``: ``pretrained=True`` takes the released checkpoint from the cache,
    downloading it on first use (see :mod:`stunet.weights.hub`); ``pretrained=FILE`` reads that file (any supported
    format). ``trust_checkpoint=True`` allows pickled objects beyond tensors in that file (never implied by a
    download); without ``pretrained`` there is no file to trust, and it is refused.
    """
    if pretrained is False:
        pretrained = None
    if pretrained is None and trust_checkpoint:
        raise ValueError(f"create_model({name!r}, trust_checkpoint=True): trust_checkpoint applies to the weights "
                         f"file; give pretrained=FILE (or pretrained=True for a release), or drop trust_checkpoint")
    if name in list_models() and pretrained is None:
        return model_builder(name)(**kwargs)
    from stunet.weights.loading import create_pretrained  # checkpoint I/O only when asked for
    if pretrained is not None and name in list_models():  # a model name: the release follows from the file, or is unique
        return create_pretrained(name, pretrained, trust=trust_checkpoint, **kwargs)
    try:
        config = get_release(name)
    except ValueError as e:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}" if name not in list_models()
                         else str(e)) from None
    if pretrained is None:
        return model_builder(config.model)(**{**config.architecture, **kwargs})
    return create_pretrained(config.name, pretrained, trust=trust_checkpoint, **kwargs)
