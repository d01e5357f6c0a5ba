"""Fine-tuning STU-Nets inside nnU-Net: which parameters train at which learning rate, and loading
``-pretrained_weights`` of any supported format safely with a report.

nnU-Net's ``nnUNetv2_train -pretrained_weights FILE`` calls ``nnunetv2.run.run_training.load_pretrained_weights``,
which trusts the pickle, needs an nnU-Net v2 file and copies only equal shapes. STU-Net trainers route that call, for
their own networks only, to the trainer's ``load_pretrained_weights`` (see :func:`route_pretrained_loading`).
"""
from __future__ import annotations

import weakref

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from stunet.errors import CheckpointError
from stunet.weights.checkpoint import strip_wrapper_prefix

HEADS = "seg_outputs."
ENCODER = "conv_blocks_context."
TRAINABLE = ("all", "decoder", "heads")


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside nnU-Net's DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def parameter_groups(network: nn.Module, lr: float, trainable: str = "all", body_lr_factor: float = 1.0):
    """Optimizer groups: the heads at ``lr``, everything else at ``lr * body_lr_factor``. Parameters outside
    ``trainable`` ('all'; 'decoder': encoder frozen; 'heads': only the segmentation heads) stop requiring grad."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
    heads, body = [], []
    for name, parameter in network.named_parameters():
        name = strip_wrapper_prefix(name)
        frozen = (trainable == "heads" and not name.startswith(HEADS)) or (
            trainable == "decoder" and name.startswith(ENCODER))
        parameter.requires_grad_(not frozen)
        if not frozen:
            (heads if name.startswith(HEADS) else body).append(parameter)
    groups = [{"params": heads, "lr": lr, "name": "heads"},
              {"params": body, "lr": lr * body_lr_factor, "name": "body"}]
    return [g for g in groups if g["params"]]


class PolyLRPerGroup(PolyLRScheduler):
    """nnU-Net's poly schedule, applied to each group's own initial learning rate (nnU-Net's sets one for all)."""

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def route_pretrained_loading(trainer) -> None:
    """Make nnU-Net's ``-pretrained_weights`` reach ``trainer.load_pretrained_weights`` for ``trainer.network``.

    ``nnUNetv2_train -pretrained_weights FILE`` calls ``nnunetv2.run.run_training.load_pretrained_weights(network,
    FILE)`` right after ``trainer.initialize()``; nnU-Net offers no hook there, and its loader unpickles with full
    trust. The first STU-Net trainer to initialise replaces that module attribute, once per process, by a dispatcher:
    networks registered here (weakly, by STU-Net trainers' ``initialize``) go to their trainer's loader, every other
    network to nnU-Net's own loader, unchanged.
    """
    import nnunetv2.run.run_training as run_training

    if not getattr(run_training.load_pretrained_weights, "stunet_dispatch", False):
        stock = run_training.load_pretrained_weights

        def load_pretrained_weights(network, fname, verbose=False):
            owner = _TRAINERS.get(network, lambda: None)()
            if owner is None:
                return stock(network, fname, verbose)
            try:
                return owner.load_pretrained_weights(fname)
            except CheckpointError as e:  # a user's file: one line naming it, not a traceback
                raise SystemExit(f"nnUNetv2_train: error: -pretrained_weights {e}") from None

        load_pretrained_weights.stunet_dispatch = True
        load_pretrained_weights.stock = stock
        run_training.load_pretrained_weights = load_pretrained_weights
    _TRAINERS[trainer.network] = weakref.ref(trainer)


# network -> the STU-Net trainer that built it; weak both ways, so that neither outlives its training
_TRAINERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
