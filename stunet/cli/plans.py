"""``stunet-plans``: STU-Net plans for an nnU-Net dataset, so that nnU-Net's own commands train and predict STU-Nets.

The plans hold the whole architecture (``-p PLANS`` makes ``nnUNetv2_train`` with any trainer, the stock
``nnUNetTrainer`` included, train this STU-Net). Preprocessing comes from the dataset's fingerprint as nnU-Net plans
it, or with ``--pretrained`` from a released model's pretraining (reader, transposition, spacing, normalisation,
resampling, as prediction with that model uses them; its patch size and strides), so fine-tuned weights see data like
their pretraining data. Patch and batch size fit the GPU memory budget by the
memory model of ``stunet-info``. See stunet.nnunet.planner.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser
from stunet.errors import one_line
from stunet.labels import check_label_map, list_label_maps
from stunet.models.presets import PRESETS
from stunet.models.registry import release_network_config
from stunet.weights.pretrained import get_pretrained_config, list_pretrained

EPILOG = """examples:
  stunet-plans -d 4 --model stunet_large --preprocess                       # STUNetPlans_large from the dataset
  stunet-plans -d 4 --pretrained stunet_base.totalseg104 --preprocess       # the pretraining preprocessing
  stunet-plans -d 4 --model stunet_huge --gpu-memory 40 --activation-checkpointing stage"""


def _nnunet(command: list[str]) -> None:
    exe = Path(sys.executable).parent / command[0]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run([str(exe) if exe.exists() else command[0], *command[1:]]).returncode != 0:
        sys.exit(f"stunet-plans: error: {command[0]} failed (its output is above)")


def _dataset_folder(root: Path, dataset: str) -> Path:
    """The raw dataset folder of an id or a folder name (plain names only: they become paths); refused where the id
    belongs to several datasets, which nnU-Net's commands (-d ID) cannot tell apart."""
    named = re.fullmatch(r"Dataset(\d{3})_[A-Za-z0-9_.-]+", dataset)
    if not (dataset.isdigit() and 0 < int(dataset) < 1000) and (named is None or ".." in dataset):
        sys.exit(f"stunet-plans: error: -d {dataset!r}: give a dataset id (1-999) or a folder name such as "
                 f"Dataset004_Liver")
    number = int(named[1]) if named else int(dataset)
    same_id = sorted(p for p in root.glob(f"Dataset{number:03d}_*") if p.is_dir()) if root.is_dir() else []
    found = [p for p in same_id if p.name == dataset] if named else same_id
    if not found:
        sys.exit(f"stunet-plans: error: no dataset {dataset!r} in nnUNet_raw ({root}); give its id (e.g. 4) or "
                 f"folder name")
    if len(same_id) > 1:
        sys.exit(f"stunet-plans: error: dataset id {number} belongs to {', '.join(p.name for p in same_id)} in {root}; "
                 f"nnU-Net's commands find datasets by id: give one of them another id")
    return found[0]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stunet-plans", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=list(PRESETS), help="the STU-Net size, preprocessing from the dataset")
    which.add_argument("--pretrained", choices=list_pretrained(), help="a released model: its size and its "
                                                                        "pretraining preprocessing")
    parser.add_argument("--gpu-memory", type=float, default=24, metavar="GB",
                        help="GPU memory budget that patch and batch size must fit (default 24)")
    parser.add_argument("--activation-checkpointing", choices=["stage", "block"],
                        help="recompute activations in the backward pass (less memory, about a third more compute); "
                             "stored in the plans and counted in the budget")
    parser.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                        help="fix the 3d_fullres patch size (default: the largest that fits, or the pretraining's)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="fix the batch size (default: the largest that fits the budget, at least 2, at most 5 %% "
                             "of the dataset's voxels; the released models were pretrained at 2)")
    parser.add_argument("--label-map", help="for label-aware fine-tuning: a shipped map (" + ", ".join(
        list_label_maps()) + ") or a JSON file naming the pretrained classes of each label; stored in the plans")
    parser.add_argument("--plans-name", default=None,
                        help="default: STUNetPlans_<size>, with --pretrained STUNetPlans_<size>_<tag>")
    parser.add_argument("--preprocess", action="store_true", help="run nnUNetv2_preprocess with the new plans")
    parser.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                        help="configurations to preprocess (default 3d_fullres)")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes for nnU-Net (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing plans of that name")
    return parser


@cli_entry("stunet-plans")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [v for v in ("nnUNet_raw", "nnUNet_preprocessed") if not os.environ.get(v)]
    if missing:
        parser.exit(2, f"stunet-plans: error: set {' and '.join(missing)} (nnU-Net's folders) first\n")
    if args.plans_name is not None and (not args.plans_name or "/" in args.plans_name or ".." in args.plans_name):
        parser.exit(2, f"stunet-plans: error: --plans-name must be a plain name, got {args.plans_name!r}\n")
    pretrained = get_pretrained_config(args.pretrained) if args.pretrained else None
    if pretrained and pretrained.missing_for_prediction():
        parser.exit(2, f"stunet-plans: error: --pretrained {pretrained.name}: its "
                       f"{', '.join(pretrained.missing_for_prediction())} are not published; plan with --model "
                       f"{pretrained.model} instead\n")
    model = pretrained.model if pretrained else args.model
    if args.label_map and args.label_map not in list_label_maps():
        if not Path(args.label_map).is_file():
            parser.exit(2, f"stunet-plans: error: --label-map {args.label_map}: neither a shipped map nor a file\n")
        args.label_map = str(Path(args.label_map).resolve())  # training runs elsewhere
    if args.batch_size is not None and args.batch_size < 1:
        parser.exit(2, "stunet-plans: error: --batch-size must be positive\n")
    if args.patch_size:
        network = release_network_config(pretrained) if pretrained else None
        if network is not None:
            bad = [(a, p, d) for a, (p, d) in enumerate(zip(args.patch_size, network.total_stride)) if p % d]
            if len(args.patch_size) != 3 or bad:
                parser.exit(2, "stunet-plans: error: --patch-size takes 3 numbers, each a multiple of the total "
                               f"stride {network.total_stride}; not so on axis " +
                               ", ".join(f"{a} ({p} vs {d})" for a, p, d in bad) + "\n")

    raw = _dataset_folder(Path(os.environ["nnUNet_raw"]), args.dataset)
    dataset_id = str(int(raw.name[len("Dataset"):len("Dataset") + 3]))
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    if args.label_map:  # before the fingerprint: a map of another label system stops now
        try:
            check_label_map(args.label_map, json.loads((raw / "dataset.json").read_text()))
        except (OSError, ValueError) as e:
            parser.exit(2, f"stunet-plans: error: {one_line(e)}\n")
    if not (preprocessed / "dataset_fingerprint.json").exists():
        _nnunet(["nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", str(args.num_processes)])

    from stunet.nnunet.planner import PLANNERS  # imports nnU-Net: after the argument checks
    planner = PLANNERS[model](raw.name, gpu_memory_target_in_gb=args.gpu_memory, plans_name=args.plans_name,
                              pretrained=pretrained, activation_checkpointing=args.activation_checkpointing or False,
                              patch_size=args.patch_size, label_map=args.label_map, batch_size=args.batch_size)
    plans_file = preprocessed / f"{planner.plans_identifier}.json"
    if plans_file.exists():
        if not args.overwrite:
            parser.exit(2, f"stunet-plans: error: {plans_file} exists; pass --overwrite or another --plans-name\n")
        plans_file.unlink()  # nnU-Net's planner would keep its other configurations
    plans = planner.plan_experiment()
    for name, configuration in plans["configurations"].items():
        if "architecture" not in configuration:
            continue
        arch = configuration["architecture"]["arch_kwargs"]
        print(f"{name}: {model}, patch {configuration['patch_size']} at {configuration['spacing']} mm, batch "
              f"{configuration['batch_size']}, strides {arch['strides'][1:]}, "
              f"{', '.join(configuration['normalization_schemes'])}; estimated "
              f"{configuration['stunet_estimated_gpu_memory_gb']} GB of the {args.gpu_memory:g} GB budget")
    print(f"wrote {plans_file}" + (f" ({pretrained.name}'s preprocessing)" if pretrained else ""))
    plans_name = planner.plans_identifier
    if args.preprocess:
        _nnunet(["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", plans_name, "-c", *args.configurations,
                 "-np", *[str(args.num_processes)] * len(args.configurations)])
    size = PRESETS[model].size
    steps = [] if args.preprocess else [
        f"nnUNetv2_preprocess -d {dataset_id} -plans_name {plans_name} -c 3d_fullres -np {args.num_processes}"]
    if pretrained:
        steps.append(f"nnUNetv2_train {dataset_id} 3d_fullres 0 -p {plans_name} -tr STUNetTrainer_{size}_ft "
                     f"-pretrained_weights {pretrained.name}    # fine-tune the released weights (downloaded on first use)")
    steps.append(f"nnUNetv2_train {dataset_id} 3d_fullres 0 -p {plans_name} -tr STUNetTrainer_{size}"
                 f"    # from scratch (any trainer takes these plans; see stunet-info --trainers)")
    print("next:\n  " + "\n  ".join(steps))
