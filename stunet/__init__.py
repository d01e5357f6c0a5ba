"""Scalable residual U-Nets (STU-Net, 14M to 1.4B parameters) for nnU-Net v2."""
from stunet.models.config import STUNetConfig
from stunet.models.network import STUNet
from stunet.weights.factory import create_model
from stunet.models.registry import list_models, register_model
from stunet.models import presets  # noqa: F401  (registers the presets)

from stunet.version import __version__
__all__ = ["STUNet", "STUNetConfig", "Segmenter", "create_model", "list_models", "register_model", "__version__"]


def __getattr__(name):  # stunet.Segmenter without importing nnU-Net's inference on every ``import stunet``
    if name == "Segmenter":
        from stunet.prediction.segmenter import Segmenter
        return Segmenter
    raise AttributeError(f"module 'stunet' has no attribute {name!r}")


# ---- Source-tree layout (issue 12) -----------------------------------------------------------------------------------
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
