"""``stunet-train``: ``nnUNetv2_train`` for a launcher that starts the processes itself (torchrun, on one node or many).

It takes ``nnUNetv2_train``'s arguments. Started alone (no ``WORLD_SIZE`` above 1 in the environment) it is
``nnUNetv2_train``: nnU-Net's own entry point runs, ``-num_gpus`` included. Started by ``torchrun`` it joins the
process group that torchrun's environment describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): NCCL with one GPU per local rank for ``-device cuda``, gloo for ``-device cpu``, and then runs
nnU-Net's own DDP training, the steps of nnU-Net's ``run_ddp`` (batch split across the ranks, logging, checkpoints and
the validation summary on rank 0, ``--c``, ``--val``, ``-pretrained_weights``).

Why not ``nnUNetv2_train`` itself: with ``-num_gpus N`` it spawns its N workers on one machine (``MASTER_ADDR=localhost``)
and gives each the GPU of its global rank; without it, it never joins a process group. Under ``stunet-train`` nnU-Net's
trainer runs unchanged except for what it cannot know from a single node:

- the device: nnU-Net's trainer picks ``cuda:<global rank>``; here each process takes ``cuda:<LOCAL_RANK>`` (or the
  CPU) and the trainer is moved onto it before it builds anything, without loss scaling on the CPU;
- the DDP wrapper: nnU-Net passes ``device_ids=[<global rank>]``; the network already lies on its one device, so the
  wrapper is built with ``device_ids=None`` (PyTorch's form for CPU modules and single-device modules);
- nnU-Net's stock ``-pretrained_weights`` loader maps the file onto ``cuda:<global rank>``; here onto the process's
  own device (STU-Net trainers load through their own loader, which reads onto the CPU).

Everything else is nnU-Net's: ``self.local_rank`` keeps nnU-Net's meaning (the global rank, 0 writes), so the log,
checkpoints and ``summary.json`` are written once, by rank 0. At the end every rank prints a digest of its weights, and
rank 0 checks that all ranks hold the same ones.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import multiprocessing
import os
import socket
import sys
import warnings
from dataclasses import dataclass

from stunet.cli.errors import cli_entry, command_parser

#: printed by each rank; tests and users compare it across ranks and with ``weights_digest`` of a checkpoint
DIGEST_LINE = "stunet-train: rank {rank}/{world} (host {host}, local rank {local}) weights sha256 {digest}"


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_from_environment(environ=os.environ) -> Launch | None:
    """The launch torchrun (or anything that sets its variables) describes, or None for a process of its own."""
    if int(environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        raise SystemExit(f"stunet-train: error: WORLD_SIZE is {environ['WORLD_SIZE']} but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set: start it with torchrun (see docs/scaling.md)")
    world = int(environ["WORLD_SIZE"])
    return Launch(int(environ["RANK"]), world, int(environ["LOCAL_RANK"]),
                  int(environ.get("LOCAL_WORLD_SIZE", world)))


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "stunet-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="nnUNetv2_train, also under torchrun across processes and machines (docs/scaling.md).",
        epilog="examples:\n"
               "  stunet-train 4 3d_fullres 0 -tr STUNetTrainer_large      # one process: exactly nnUNetv2_train\n"
               "  torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\\n"
               "      --rdzv_id=job1 $(which stunet-train) 4 3d_fullres 0 -tr STUNetTrainer_large -p STUNetPlans_large")
    p.add_argument("dataset_name_or_id", help="dataset name or id")
    p.add_argument("configuration", help="configuration, e.g. 3d_fullres")
    p.add_argument("fold", help="fold (0-4) or 'all'")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-pretrained_weights", default=None, help="checkpoint to start from")
    p.add_argument("-num_gpus", type=int, default=1,
                   help="one machine without a launcher only (nnU-Net spawns the workers); under torchrun, "
                        "--nproc_per_node sets the processes per machine")
    p.add_argument("--npz", action="store_true", help="also save validation probabilities")
    p.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the validation of a finished training")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best instead of checkpoint_final")
    p.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                   help="cuda (NCCL, one GPU per local rank under torchrun), cpu (gloo) or mps (one process only)")
    return p


@cli_entry("stunet-train")
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    launch = launch_from_environment()
    if launch is None:
        from nnunetv2.run.run_training import run_training_entry

        saved = sys.argv
        sys.argv = ["nnUNetv2_train", *argv]
        try:
            run_training_entry()
        finally:
            sys.argv = saved
        return
    if args.num_gpus != 1:
        raise SystemExit("stunet-train: error: -num_gpus spawns processes on one machine; under torchrun the "
                         "launcher starts them (--nproc_per_node per machine, --nnodes machines): leave -num_gpus out")
    if args.device == "mps":
        raise SystemExit("stunet-train: error: -device mps trains in one process only")
    train_distributed(args, launch)


def _device(args, launch: Launch):
    import torch

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("stunet-train: error: -device cuda but no GPU is visible; -device cpu trains with gloo")
        if launch.local_rank >= torch.cuda.device_count():
            raise SystemExit(f"stunet-train: error: local rank {launch.local_rank} has no GPU of its own "
                             f"({torch.cuda.device_count()} visible on {socket.gethostname()}): start at most that "
                             f"many processes per machine (--nproc_per_node)")
        torch.cuda.set_device(launch.local_rank)
        torch.set_num_threads(1)  # as nnUNetv2_train does on GPUs
        torch.set_num_interop_threads(1)
        return torch.device("cuda", launch.local_rank), "nccl"
    # the processes of one machine share its cores (nnUNetv2_train -device cpu takes all of them for its one process)
    torch.set_num_threads(max(1, multiprocessing.cpu_count() // max(1, launch.local_world_size)))
    return torch.device("cpu"), "gloo"


def train_distributed(args, launch: Launch) -> None:
    """nnU-Net's ``run_ddp``, in a process that torchrun started."""
    import torch.distributed as dist
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from torch.backends import cudnn

    fold = args.fold if args.fold == "all" else int(args.fold)
    if args.val_best and args.disable_checkpointing:
        raise SystemExit("stunet-train: error: --val_best needs checkpoints (leave out --disable_checkpointing)")
    if args.c and args.val:
        raise SystemExit("stunet-train: error: --c and --val exclude each other")
    device, backend = _device(args, launch)
    dist.init_process_group(backend)  # rendezvous from torchrun's environment (env://)
    try:
        with ddp_on_own_device(), stock_loader_on(device):
            with warnings.catch_warnings():  # nnU-Net's DDP trainer makes a CUDA GradScaler; place_on drops it
                if device.type != "cuda":
                    warnings.filterwarnings("ignore", "torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
                trainer = get_trainer_from_args(args.dataset_name_or_id, args.configuration, fold, args.tr, args.p,
                                                args.c, device=device)
            place_on(trainer, device)
            if args.disable_checkpointing:
                trainer.disable_checkpointing = True
            maybe_load_checkpoint(trainer, args.c, args.val, args.pretrained_weights)
            if device.type == "cuda":
                cudnn.deterministic = False
                cudnn.benchmark = True
            if not args.val:
                trainer.run_training()
            if args.val_best:
                trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
            same = report_weights(trainer, launch)
            trainer.perform_actual_validation(args.npz)
    finally:
        dist.destroy_process_group()
    if not same:
        raise SystemExit("stunet-train: error: the ranks ended with different weights (see the digests above)")


def place_on(trainer, device) -> None:
    """Put a trainer that nnU-Net built for DDP (on ``cuda:<global rank>``) on this process's own device."""
    trainer.device = device
    if device.type != "cuda":
        trainer.grad_scaler = None  # nnU-Net scales losses on CUDA only


class _DDPOnModuleDevice:
    """Builds PyTorch's DDP wrapper with ``device_ids=None``: the module already lies on its single device."""

    def __new__(cls, module, device_ids=None, *args, **kwargs):
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, None, *args, **kwargs)


@contextlib.contextmanager
def ddp_on_own_device():
    """nnU-Net's trainer wraps its network in ``DDP(network, device_ids=[global rank])``; meanwhile it gets
    ``device_ids=None``, which is right for a CPU module and for a module on the process's own GPU."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module

    saved = module.DDP
    module.DDP = _DDPOnModuleDevice
    try:
        yield
    finally:
        module.DDP = saved


class _OwnDevice:
    """What nnU-Net's stock pretrained-weights loader asks ``torch.distributed``: it maps the file onto
    ``cuda:<get_rank()>`` when a process group exists, onto the saved devices (as in one process) otherwise."""

    def __init__(self, device):
        self.device = device

    def is_initialized(self) -> bool:
        return self.device.type == "cuda"

    def get_rank(self) -> int:
        return self.device.index or 0


@contextlib.contextmanager
def stock_loader_on(device):
    """nnU-Net's ``load_pretrained_weights`` reads onto this process's device instead of the global rank's GPU."""
    import nnunetv2.run.load_pretrained_weights as module

    saved = module.dist
    module.dist = _OwnDevice(device)
    try:
        yield
    finally:
        module.dist = saved


def network_of(trainer):
    """The network inside the DDP and torch.compile wrappers."""
    network = trainer.network
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def weights_digest(state_dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (any order of keys)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def report_weights(trainer, launch: Launch) -> bool:
    """Each rank prints its weights' digest; rank 0 says whether all ranks agree. True when they do."""
    import torch.distributed as dist

    digest = weights_digest(network_of(trainer).state_dict())
    print(DIGEST_LINE.format(rank=launch.rank, world=launch.world_size, host=socket.gethostname(),
                             local=launch.local_rank, digest=digest), flush=True)
    digests = [None] * launch.world_size
    dist.all_gather_object(digests, digest)
    same = len(set(digests)) == 1
    if launch.rank == 0:
        print(f"stunet-train: weights identical on all {launch.world_size} ranks" if same else
              f"stunet-train: weights differ between ranks: {digests}", flush=True)
    return same


if __name__ == "__main__":
    main()
