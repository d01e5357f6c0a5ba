"""``stunet-info``: parameters, compute and estimated training memory of the registered models."""
from __future__ import annotations

import argparse

from stunet.cli.errors import cli_entry, command_parser
from stunet.models.registry import list_models

GIB = 1024 ** 3


def _row(name: str, args) -> list[str]:
    import torch

    from stunet.models.complexity import measure
    from stunet.weights.factory import create_model

    strides = [[2] * len(args.patch_size)] * 5
    with torch.device("meta"):
        config = create_model(name, in_channels=args.in_channels, num_classes=args.num_classes, strides=strides).config
    c = measure(config, args.patch_size, activation_checkpointing=args.checkpointing or False)
    return [name, f"{c.parameters / 1e6:.2f}M", f"{c.macs / 1e9:.1f}", f"{c.activation_bytes / GIB:.2f}",
            f"{c.training_bytes(args.batch_size) / GIB:.1f}"]


def _trainers(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """``--trainers``: every class of nnunet_plugins/stunet_trainers.py, or the names asked for."""
    from stunet.nnunet.trainer import STUNetTrainer, describe_trainer  # imports nnU-Net
    from stunet.nnunet_plugins import stunet_trainers

    listed = {name: value for name, value in vars(stunet_trainers).items()
              if isinstance(value, type) and issubclass(value, STUNetTrainer)}
    for name in names:
        if name not in listed:
            parser.exit(2, f"stunet-info: error: no STU-Net trainer called {name!r}\n")
    if not names:
        print(f"{len(listed)} STU-Net trainers (nnunet_plugins/stunet_trainers.py), each nnU-Net's nnUNetTrainer with "
              f"the STU-Net of the plans\n(STU-Net plans) or of its size (nnU-Net's own plans). Precision is no part "
              f"of a name: STUNET_PRECISION=bf16 trains\nany of them in bfloat16 on CUDA (default fp16; float32 on the "
              f"CPU). Every fine-tuning trainer (_ft...) needs -pretrained_weights.\n")
    for name in names or listed:
        print(f"{name:<44} {describe_trainer(listed[name])}")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "stunet-info", description="Parameters, MACs and estimated training memory of STU-Net models. "
        "Nothing is allocated: the models are built on PyTorch's meta device.")
    parser.add_argument("models", nargs="*", default=["all"], help="model names, or 'all' (default); known: "
                        + ", ".join(list_models()))
    parser.add_argument("-p", "--patch-size", type=int, nargs="+", default=[128, 128, 128],
                        help="patch size, 3 numbers (3D) or 2 (2D networks); default 128 128 128")
    parser.add_argument("-b", "--batch-size", type=int, default=2, help="batch size for the memory total (default 2)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=105)
    parser.add_argument("--checkpointing", nargs="?", const="stage", choices=["stage", "block"],
                        help="with activation checkpointing per stage (default) or per residual block")
    parser.add_argument("--csv", action="store_true", help="comma-separated output instead of a markdown table")
    parser.add_argument("--trainers", action="store_true",
                        help="list the STU-Net trainers nnUNetv2_train -tr takes, with what each changes (or only "
                             "the trainer names given in place of models)")
    return parser


@cli_entry("stunet-info")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trainers:
        _trainers(parser, [] if args.models == ["all"] else args.models)
        return
    names = list_models() if args.models == ["all"] else args.models
    if len(args.patch_size) not in (2, 3):
        parser.error(f"--patch-size takes 2 or 3 numbers, got {args.patch_size}")
    header = ["model", "parameters", "GMACs/forward", "activations/sample (GiB, fp32)",
              f"training memory at batch {args.batch_size} (GiB, fp32, est.)"]
    try:
        rows = [_row(name, args) for name in names]
    except ValueError as e:
        parser.exit(2, f"stunet-info: error: {e}\n")
    patch = "x".join(map(str, args.patch_size))
    if args.csv:
        print(",".join(header))
        print("\n".join(",".join(r) for r in rows))
        return
    print(f"patch {patch}, {args.in_channels} input channel(s), {args.num_classes} classes"
          + (f", activation checkpointing per {args.checkpointing}" if args.checkpointing else ""))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
