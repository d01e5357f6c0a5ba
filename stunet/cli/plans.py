"""``stunet-plans``: give a dataset the released models' preprocessing (spacing, normalisation, patch size, strides).

Fine-tuned weights transfer best when the downstream data look like the pretraining data. This writes nnU-Net plans
``<plans name>.json`` for the dataset with the pretrained model's preprocessing (see stunet.nnunet_plans), running
nnU-Net's fingerprint extraction first if needed, and with ``--preprocess`` runs nnUNetv2_preprocess on them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from stunet.nnunet_plans import CONFIGURATION, plans_for_pretrained
from stunet.pretrained import get_pretrained_config, list_pretrained
from stunet.registry import create_model


def _nnunet(command: list[str]) -> None:
    exe = Path(sys.executable).parent / command[0]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run([str(exe) if exe.exists() else command[0], *command[1:]]).returncode != 0:
        sys.exit(f"stunet-plans: {command[0]} failed (its output is above)")


def _dataset_folder(root: Path, dataset: str) -> Path:
    prefix = dataset if dataset.startswith("Dataset") else f"Dataset{int(dataset):03d}_"
    found = sorted(p for p in root.glob(f"{prefix}*") if p.is_dir()) if root.is_dir() else []
    if not found:
        sys.exit(f"stunet-plans: no dataset {dataset!r} in nnUNet_raw ({root}); give its id (e.g. 4) or folder name")
    return found[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stunet-plans", description=__doc__.split(": ", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="then: nnUNetv2_train ID 3d_fullres FOLD -tr STUNetTrainer_<size>_ft "
                                            "-p PLANS_NAME -pretrained_weights FILE")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    parser.add_argument("--pretrained", required=True, choices=list_pretrained(), help="whose preprocessing")
    parser.add_argument("--plans-name", default=None, help="default: STUNetPlans_<tag>, e.g. STUNetPlans_totalseg104")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="another patch size (default the pretraining's; smaller GPUs), a multiple of the strides")
    parser.add_argument("--preprocess", action="store_true", help="run nnUNetv2_preprocess with the new plans")
    parser.add_argument("-np", "--num-processes", type=int, default=2, help="processes for nnU-Net (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing plans of that name")
    args = parser.parse_args(argv)

    missing = [v for v in ("nnUNet_raw", "nnUNet_preprocessed") if not os.environ.get(v)]
    if missing:
        parser.exit(2, f"stunet-plans: error: set {' and '.join(missing)} (nnU-Net's folders) first\n")
    config = get_pretrained_config(args.pretrained)
    if args.patch_size:
        config = {**config, "preprocessing": {**config["preprocessing"], "patch_size": args.patch_size}}
        with torch.device("meta"):
            net_config = create_model(config["model"], **config["architecture"]).config
        bad = [(a, p, d) for a, (p, d) in enumerate(zip(args.patch_size, net_config.total_stride)) if p % d]
        if bad:
            parser.exit(2, "stunet-plans: error: --patch-size must be a multiple of the total stride "
                           f"{net_config.total_stride} on each axis; not so on axis " +
                           ", ".join(f"{a} ({p} vs {d})" for a, p, d in bad) + "\n")
    plans_name = args.plans_name or f"STUNetPlans_{config['name'].split('.')[1]}"
    raw = _dataset_folder(Path(os.environ["nnUNet_raw"]), args.dataset)
    dataset_id = raw.name[len("Dataset"):len("Dataset") + 3]
    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / raw.name
    plans_file = preprocessed / f"{plans_name}.json"
    if plans_file.exists() and not args.overwrite:
        parser.exit(2, f"stunet-plans: error: {plans_file} exists; pass --overwrite or another --plans-name\n")
    fingerprint_file = preprocessed / "dataset_fingerprint.json"
    if not fingerprint_file.exists():
        _nnunet(["nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", str(args.num_processes)])
    fingerprint = json.loads(fingerprint_file.read_text())
    channels = len(json.loads((raw / "dataset.json").read_text())["channel_names"])
    plans = plans_for_pretrained(config, raw.name, plans_name, channels, fingerprint)
    plans_file.write_text(json.dumps(plans, indent=2))
    shutil.copyfile(raw / "dataset.json", preprocessed / "dataset.json")  # as nnU-Net's planner does
    pre = config["preprocessing"]
    print(f"wrote {plans_file}: {CONFIGURATION} at {pre['spacing']} mm, z-score per image, patch {pre['patch_size']}, "
          f"strides {config['architecture']['strides']} ({config['name']})")
    if args.preprocess:
        _nnunet(["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", plans_name, "-c", CONFIGURATION,
                 "-np", str(args.num_processes)])
    print(f"next: nnUNetv2_train {dataset_id} {CONFIGURATION} 0 -tr STUNetTrainer_{config['model'].split('_')[1]}_ft "
          f"-p {plans_name} -pretrained_weights {config['checkpoint']['file']}")
