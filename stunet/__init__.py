"""Scalable residual U-Nets (STU-Net, 14M to 1.4B parameters) for nnU-Net v2.

The documented names are imported on first use (PEP 562), so ``import stunet`` and the commands that need no network
(``stunet-evaluate``, ``stunet-report``) do not load PyTorch:

- the network family: ``STUNet``, ``STUNetConfig``, ``list_models``, ``register_model`` (:mod:`stunet.models`, the
  presets registered with them), ``create_model`` (:mod:`stunet.weights.factory`);
- prediction: ``Segmenter`` (:mod:`stunet.prediction.segmenter`);
- evaluation: ``evaluate`` (:mod:`stunet.evaluation.evaluate`).
"""
from stunet.version import __version__

_LAZY = {"STUNet": "stunet.models.network", "STUNetConfig": "stunet.models.config",
         "list_models": "stunet.models.registry", "register_model": "stunet.models.registry",
         "create_model": "stunet.weights.factory", "Segmenter": "stunet.prediction.segmenter",
         "evaluate": "stunet.evaluation.evaluate"}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'stunet' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


# ---- Source-tree layout ----------------------------------------------------------------------------------------------
# setup.py installs the checkout's top-level nnunet_plugins/ and pretrained_configs/ as stunet.nnunet_plugins and
# stunet.pretrained_configs. Python started in the checkout's root imports ./stunet instead, which holds neither, so in
# a checkout (setup.py beside stunet/, the two folders not inside it) a finder appended to sys.meta_path maps exactly
# those two names onto the sibling folders. An installed package holds both folders and is left untouched; in an
# editable install the editable finder, earlier in sys.meta_path, answers first with the same folders.
def _map_checkout_subpackages():
    import importlib.machinery
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    folders = ("nnunet_plugins", "pretrained_configs")
    if not os.path.isfile(os.path.join(root, "setup.py")) or any(os.path.isdir(os.path.join(here, f)) for f in folders):
        return
    if any(getattr(finder, "stunet_checkout", None) == root for finder in sys.meta_path):
        return  # already there (stunet imported again, e.g. importlib.reload)
    names = {f"{__name__}.{f}" for f in folders}

    class CheckoutSubpackageFinder:
        stunet_checkout = root

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            # "stunet.nnunet_plugins" looked up in the checkout's root finds its folder nnunet_plugins/
            return importlib.machinery.PathFinder.find_spec(fullname, [root]) if fullname in names else None

    sys.meta_path.append(CheckoutSubpackageFinder)


_map_checkout_subpackages()
del _map_checkout_subpackages
