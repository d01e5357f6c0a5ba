"""The network family: building blocks (:mod:`.blocks`), the assembled residual U-Net (:mod:`.network`) and its
configuration (:mod:`.config`), the registry of models and their releases (:mod:`.registry`, :mod:`.release`) and the
published presets (:mod:`.presets`), and what a network costs before it is built (:mod:`.complexity`: parameters,
compute, training memory; :mod:`.memory`: prediction memory).

May import: torch, the base modules (``stunet.errors``, ``stunet.settings``, ...) and :mod:`stunet.io` (the registry
reads the releases' JSON files). Nothing about weights files or nnU-Net.
"""
from stunet.models import presets  # noqa: E402,F401  (registers the presets wherever a model is listed or built)
