"""``stunet-demo``: the main job end to end on a fresh machine, with no downloads.

Writes a small synthetic dataset, then runs the stock nnU-Net commands on it: planning and preprocessing, training an
STU-Net with ``nnUNetv2_train -tr STUNetTrainer_small_quick``, and prediction of held-out cases. Prints Dice per label
and where the images, predictions and model are. Everything stays under ``--workdir``; your own nnU-Net folders are
not touched.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser

DATASET_ID = 990


def _command(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _run_step(title: str, command: list[str], env: dict, log: Path, epochs: int | None = None) -> None:
    """Run an nnU-Net command with its output in ``log``; a progress bar over epochs while training."""
    from tqdm import tqdm

    print(f"\n{title}\n  $ {' '.join(command)}\n  (log: {log})")
    start = time.time()
    bar = tqdm(total=epochs, unit="epoch", leave=False) if epochs else None
    with open(log, "w") as out:
        process = subprocess.Popen([_command(command[0])] + command[1:], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            out.write(line)
            if bar is not None and re.search(r"Epoch time", line):
                bar.update(1)
        code = process.wait()
    if bar is not None:
        bar.close()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        sys.exit(f"stunet-demo: '{' '.join(command)}' failed with exit code {code}. Last lines of {log}:\n{tail}")
    print(f"  done in {time.time() - start:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stunet-demo", description=__doc__.split("\n\n")[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("stunet_demo"),
                        help="folder for the dataset, nnU-Net's folders, predictions and logs (default ./stunet_demo)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="training and prediction device (auto: cuda when available)")
    parser.add_argument("--trainer", default="STUNetTrainer_small_quick",
                        help="nnU-Net trainer (default STUNetTrainer_small_quick: 5 epochs of 20 iterations)")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing --workdir first")
    return parser


@cli_entry("stunet-demo")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    import numpy as np
    import SimpleITK as sitk

    from stunet.nnunet.env import with_trainer_folder
    from stunet.nnunet.synthetic import LABELS, dice_per_label, write_dataset


    work = args.workdir.resolve()
    if work.exists() and any(work.iterdir()):
        if not args.overwrite:
            parser.exit(2, f"stunet-demo: error: {work} exists and is not empty; pass --overwrite or another "
                           f"--workdir\n")
        shutil.rmtree(work)
    device = args.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    logs = work / "logs"
    logs.mkdir(parents=True)
    env = with_trainer_folder(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"))
    workers = str(max(1, min(4, (os.cpu_count() or 2) // 2)))
    env.setdefault("nnUNet_n_proc_DA", workers)
    env.setdefault("nnUNet_def_n_proc", workers)

    folder = write_dataset(work / "nnUNet_raw", dataset_id=DATASET_ID, num_train=10, num_test=2)
    print(f"stunet-demo: wrote a synthetic dataset of 10 training and 2 held-out cases to {folder}\n"
          f"(a bright ball and a dark box per case at random places; nnU-Net folders under {work}; device {device})")
    from stunet.nnunet_plugins import stunet_trainers  # the trainer's epoch count, for the progress bar
    trainer = getattr(stunet_trainers, args.trainer, None)
    epochs = trainer.settings.get("num_epochs", 1000) if trainer is not None else None
    predictions = work / "predictions"
    d = str(DATASET_ID)
    _run_step("[1/3] planning and preprocessing", ["nnUNetv2_plan_and_preprocess", "-d", d, "-c", "3d_fullres",
                                                    "-np", workers, "-npfp", workers], env, logs / "plan.txt")
    _run_step("[2/3] training", ["nnUNetv2_train", d, "3d_fullres", "0", "-tr", args.trainer, "-device", device],
              env, logs / "train.txt", epochs)
    _run_step("[3/3] predicting the held-out cases", [
        "nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(predictions), "-d", d, "-c", "3d_fullres",
        "-f", "0", "-tr", args.trainer, "-device", device, "-npp", workers, "-nps", workers], env,
        logs / "predict.txt")

    names = {v: k for k, v in LABELS.items() if v}
    print("\nDice on the held-out cases:")
    print(f"  {'case':<10}" + "".join(f"{names[label]:>8}" for label in names))
    scores = []
    for reference in sorted((folder / "labelsTs").glob("*.nii.gz")):
        dice = dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / reference.name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(reference))), list(names))
        scores.append(list(dice.values()))
        print(f"  {reference.name[:-7]:<10}" + "".join(f"{v:8.3f}" for v in dice.values()))
    print(f"  {'mean':<10}" + "".join(f"{v:8.3f}" for v in np.mean(scores, axis=0)))
    model = work / "nnUNet_results" / folder.name / f"{args.trainer}__nnUNetPlans__3d_fullres"
    print(f"\nimages:      {folder / 'imagesTs'}\nreferences:  {folder / 'labelsTs'}\npredictions: {predictions}\n"
          f"model:       {model}\nlogs:        {logs}")
