"""Weights: reading checkpoint files safely (:mod:`.pickle_guard`, :mod:`.safe_load`, :mod:`.plain`,
:mod:`.checkpoint`), the released models seen from here (:mod:`.pretrained`; the registry holds them), downloading
them on demand (:mod:`.hub`), copying weights into a network of another shape (:mod:`.transfer`), the one route from a checkpoint
file into a network (:mod:`.loading`) and ``create_model``, the one door to every model with or without weights
(:mod:`.factory`).

May import: :mod:`stunet.models` and the base modules.
"""
