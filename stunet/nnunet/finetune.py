"""Fine-tuning STU-Nets inside nnU-Net: which parameters train at which learning rate, and loading
``-pretrained_weights`` of any supported format safely with a report.

nnU-Net's ``nnUNetv2_train -pretrained_weights FILE`` calls ``nnunetv2.run.run_training.load_pretrained_weights``,
which trusts the pickle, needs an nnU-Net v2 file and copies only equal shapes. STU-Net trainers route that one call,
for their own networks only, to the trainer's ``load_pretrained_weights`` (see :func:`pretrained_loading_routed`);
nnU-Net's loader is back in place once it returns.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def pretrained_loading_routed(trainer):
    """While the block runs, ``nnunetv2.run.run_training.load_pretrained_weights`` sends ``trainer.network`` to
    ``trainer.load_pretrained_weights``; every other network still goes to nnU-Net's own loader, unchanged.

    ``nnUNetv2_train -pretrained_weights FILE`` calls that module attribute (``load_pretrained_weights(network,
    FILE)``) right after ``trainer.initialize()``; nnU-Net offers no hook there, and its loader unpickles with full
    trust. The attribute is replaced while at least one route is open (routes nest, one per trainer) and put back in
    ``finally`` when the last one closes, so nothing stays patched after the call that needed it.
    """
    import nnunetv2.run.run_training as run_training

    network = unwrap(trainer.network)
    if not _OPEN:
        _STOCK[:] = [run_training.load_pretrained_weights]
        run_training.load_pretrained_weights = _dispatch
    _OPEN.append(network)
    _TRAINERS[network] = weakref.ref(trainer)
    try:
        yield
    finally:
        _OPEN.remove(network)
        if network not in _OPEN:
            _TRAINERS.pop(network, None)
        if not _OPEN:
            if run_training.load_pretrained_weights is _dispatch:  # unless someone replaced it meanwhile
                run_training.load_pretrained_weights = _STOCK[0]
            _STOCK.clear()


def open_pretrained_route(trainer) -> None:
    """Open :func:`pretrained_loading_routed` for a trainer whose ``initialize`` nnU-Net calls right before the load
    (``maybe_load_checkpoint`` in ``nnUNetv2_train``, where no ``with`` can reach). It closes when that load is done,
    or at :func:`close_pretrained_route` (the trainer's next step: training, ``--c``, ``--val``) at the latest."""
    close_pretrained_route(trainer)
    stack = contextlib.ExitStack()
    stack.enter_context(pretrained_loading_routed(trainer))
    trainer.__dict__[_ROUTE] = stack


def close_pretrained_route(trainer) -> None:
    """Close the route :func:`open_pretrained_route` opened for ``trainer``, if one is open."""
    stack = vars(trainer).pop(_ROUTE, None)
    if stack is not None:
        stack.close()


def _dispatch(network, fname, verbose=False):
    """nnU-Net's ``load_pretrained_weights`` while a route is open: a routed network's trainer loads it."""
    owner = _TRAINERS.get(unwrap(network), lambda: None)()
    if owner is None:
        return _STOCK[0](network, fname, verbose)
    try:
        return owner.load_pretrained_weights(fname)
    except CheckpointError as e:  # a user's file: one line naming it, not a traceback
        raise SystemExit(f"nnUNetv2_train: error: -pretrained_weights {e}") from None
    finally:
        close_pretrained_route(owner)  # the load this route was opened for is done


_ROUTE = "_stunet_pretrained_route"
# network -> the STU-Net trainer that built it, while its route is open; weak, so that neither outlives its training
_TRAINERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_OPEN: list = []  # the networks of the open routes (a network twice if its routes nest)
_STOCK: list = []  # the loader the first open route found, put back when the last closes
