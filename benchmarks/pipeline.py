"""Whole-body CT prediction on the CPU: how much the pipeline around the network costs, and whether it agrees with
nnU-Net's.

    python benchmarks/pipeline.py [--work /tmp/stunet_bench_predict] [--runs 2] [--skip-nnunet]

Input: the example CT of ../shared stacked and resampled to 512×512×600 voxels at 0.8 mm (157M voxels, 64 tiles of
128³ at 1.5 mm; benchmarks/predict.py's whole-body case). Model: the 105-class STU-Net-S fitted to that CT by
benchmarks/predict.py (cached in --work), fp32, no mirroring, step 0.5, CPU.

1. ``stunet-predict`` end to end, ``--runs`` times: wall time and peak memory of the process tree (PSS, which counts
   shared pages once, and RSS), and the phases it reports per case (read, preprocess, network = the tiles' forward
   passes, export = blending, resampling, head and argmax, writing); the ratio of wall time to network time.
2. Agreement with ``nnUNetv2_predict_from_modelfolder`` on the same case. nnU-Net's export resamples every class's
   logits to the output grid in float64 (105 × 157M voxels: more than 100 GB), so both commands run a copy of the
   model whose head keeps only the classes the full model segments on this case in step 1 (and the background): the
   same weights for both; per-label Dice (mean and minimum over the labels either output holds).

Results: benchmarks/results/pipeline_cpu.md.

``--qc`` instead measures what ``stunet-predict --qc`` costs: ``--runs`` pairs of runs, without and
with ``--qc``, alternating, on the same case; per pair the wall times, the qc phase (components and flags on the written
map) and the export phase (which collects the winning probabilities), and the cost as (wall with - wall without) /
wall without. Results: benchmarks/results/pipeline_qc_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from machine import describe
from predict import BIN, EXAMPLE, command_env, dice_agreement, prepared
from process_monitor import run_measured

PHASES = ("read", "preprocess", "network", "export", "writing")


def make_whole_body(folder: Path) -> Path:
    """The example CT stacked along z and resampled to 512×512×600 voxels at 0.8 mm (cached in ``folder``)."""
    from scipy.ndimage import zoom

    path = folder / "wholebody_0000.nii.gz"
    if path.exists():
        return path
    ct = sitk.ReadImage(str(EXAMPLE / "example_ct_sm.nii.gz"))
    stacked = np.concatenate([sitk.GetArrayFromImage(ct)] * 6, axis=0)  # 180 slices of 3 mm
    array = zoom(stacked, [600 / stacked.shape[0], 512 / stacked.shape[1], 512 / stacked.shape[2]], order=1)
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 0.8)), image.SetOrigin(ct.GetOrigin()), image.SetDirection(ct.GetDirection())
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def phases(log: Path) -> dict[str, float]:
    """The per-case phase line stunet-predict prints: 'case: read 3.4 s, preprocess 0.9 s, ...'."""
    text = log.read_text(errors="replace").replace("\r", "\n")
    line = [l for l in text.splitlines() if re.search(r": read [\d.]+ s, ", l)][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", line)}


def pruned_model_folder(checkpoint: Path, classes: list[int], folder: Path) -> Path:
    """An nnU-Net model folder of the fitted S keeping only ``classes`` (0 first) in its heads."""
    from stunet.prediction.model import load_pretrained

    model = load_pretrained("stunet_small.totalseg104", checkpoint)
    network = model.networks[0]
    state = network.state_dict()
    for key in list(state):
        if key.startswith("seg_outputs."):
            state[key] = state[key][classes].clone()
    names = {v: k for k, v in model.dataset_json["labels"].items()}
    dataset_json = {**model.dataset_json, "labels": {names[c]: i for i, c in enumerate(classes)}}
    plans = json.loads(json.dumps(model.plans))
    (folder / "fold_all").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.save({"network_weights": state, "trainer_name": "STUNetTrainer_small",
                "init_args": {"configuration": model.configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_all" / "checkpoint_final.pth")
    return folder


def qc_cost(predict: list[str], env: dict, work: Path, args) -> None:
    rows, costs = [], []
    for run in range(args.runs):
        walls = {}
        for mode, extra in (("without", []), ("with", ["--qc"])):
            print(f"stunet-predict {mode} --qc, whole-body CT, pair {run + 1} ...", flush=True)
            log = work / f"pipeline_qc_{mode}_{run}.log"
            wall, _, pss = run_measured(predict + ["-o", str(work / f"out_qc_{mode}")] + extra, env, log, pss=True)
            walls[mode] = (wall, phases(log), pss)
        (plain, plain_phases, plain_pss), (qc, qc_phases, qc_pss) = walls["without"], walls["with"]
        costs.append((qc - plain) / plain)
        rows.append(f"| {run + 1} | {plain:.1f} | {qc:.1f} | {plain_phases['export']:.1f} | {qc_phases['export']:.1f} "
                    f"| {qc_phases.get('qc', 0):.1f} | **{costs[-1]:+.1%}** | {qc_phases.get('qc', 0) / qc:.1%} | "
                    f"{plain_pss / 2 ** 30:.2f} / {qc_pss / 2 ** 30:.2f} |")
        print("  " + rows[-1], flush=True)
    lines = [
        "Cost of `stunet-predict --qc` (per-label confidence, uncertain fraction, components, flags) on the whole-body "
        "CT, 512×512×600 voxels at 0.8 mm, 105-class STU-Net-S (fitted weights), fp32, no mirroring, CPU.",
        f"Machine: {describe()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        "Command: `python benchmarks/pipeline.py --qc`. Goal: at most 5 % of the prediction time.", "",
        "| pair | wall without (s) | wall with (s) | export without | export with | qc phase | cost (wall) | qc phase "
        "/ wall | peak PSS without / with (GiB) |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Median cost over the pairs: **{float(np.median(costs)):+.1%}** of the wall time."]
    write_results(lines, args.results)


def write_results(lines: list[str], path: Path) -> None:
    table = "\n".join(lines)
    print("\n" + table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_predict"))
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip-nnunet", action="store_true", help="leave out the agreement run (about 6 minutes)")
    parser.add_argument("--results", type=Path, help="default: results/pipeline_cpu.md (pipeline_qc_cpu.md with --qc)")
    parser.add_argument("--qc", action="store_true", help="measure the cost of --qc instead (pairs of runs)")
    args = parser.parse_args()
    args.results = args.results or Path(__file__).parent / "results" / (
        "pipeline_qc_cpu.md" if args.qc else "pipeline_cpu.md")
    work = args.work
    _, checkpoint = prepared(work)
    big = make_whole_body(work / "wholebody")
    env = command_env(work)
    predict = [str(BIN / "stunet-predict"), "-i", str(big.parent), "--pretrained", "stunet_small.totalseg104",
               "--checkpoint", str(checkpoint), "--disable-tta", "--device", "cpu", "--overwrite"]
    if args.qc:
        return qc_cost(predict, env, work, args)
    rows = []
    for run in range(args.runs):
        print(f"stunet-predict, whole-body CT, run {run + 1} ...", flush=True)
        log = work / f"pipeline_{run}.log"
        wall, rss, pss = run_measured(predict + ["-o", str(work / "out_pipeline")], env, log, pss=True)
        measured = phases(log)
        startup = wall - sum(measured.values())
        rows.append(f"| {run + 1} | {wall:.1f} | " + " | ".join(f"{measured[p]:.1f}" for p in PHASES)
                    + f" | {startup:.1f} | **{wall / measured['network']:.2f}×** | {pss / 2 ** 30:.2f} | "
                      f"{rss / 2 ** 30:.2f} |")
        print("  " + rows[-1], flush=True)
    lines = [
        "Whole-body CT, 512×512×600 voxels at 0.8 mm (157M voxels; 64 tiles of 128³ at 1.5 mm), 105-class STU-Net-S "
        "(fitted weights), fp32, no mirroring, step 0.5, CPU.",
        f"Machine: {describe()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        "Command: `python benchmarks/pipeline.py`.", "",
        "| run | wall (s) | read | preprocess | network (tiles) | export | writing | start-up, loading | wall / network "
        "| peak PSS (GiB) | peak RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    if not args.skip_nnunet:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out_pipeline" / "wholebody.nii.gz")))
        classes = sorted(set(np.unique(ours).tolist()) | {0})
        folder = pruned_model_folder(checkpoint, classes, work / "pruned_model")
        outputs = {}
        for name, command in {
            "nnUNetv2_predict": [str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(big.parent), "-o",
                                 str(work / "out_pipeline_nnunet"), "-m", str(folder), "-f", "all", "--disable_tta",
                                 "-device", "cpu", "-npp", "1", "-nps", "1"],
            "stunet-predict": [str(BIN / "stunet-predict"), "-i", str(big.parent), "-o",
                               str(work / "out_pipeline_pruned"), "-m", str(folder), "-f", "all", "--disable-tta",
                               "--device", "cpu", "--overwrite"]}.items():
            print(f"{name}, whole-body CT, model pruned to {len(classes)} classes ...", flush=True)
            wall, rss, pss = run_measured(command, env, work / f"pipeline_{name}.log", pss=True)
            out = work / ("out_pipeline_nnunet" if name.startswith("nnU") else "out_pipeline_pruned")
            outputs[name] = (wall, pss, sitk.GetArrayFromImage(sitk.ReadImage(str(out / "wholebody.nii.gz"))))
            print(f"  {wall:.1f} s, peak PSS {pss / 2 ** 30:.2f} GiB", flush=True)
        mean, worst, n = dice_agreement(outputs["nnUNetv2_predict"][2], outputs["stunet-predict"][2])
        differ = int(np.sum(outputs["nnUNetv2_predict"][2] != outputs["stunet-predict"][2]))
        lines += ["", f"Agreement on the whole-body CT with `nnUNetv2_predict_from_modelfolder` (same weights: the fitted "
                  f"S with its head cut to the {len(classes)} classes it segments on this case, "
                  f"{', '.join(map(str, classes))}): per-label Dice mean **{mean:.4f}**, minimum **{worst:.4f}** "
                  f"over {n} labels; {differ:,} of {outputs['stunet-predict'][2].size:,} voxels differ. "
                  f"nnUNetv2_predict {outputs['nnUNetv2_predict'][0]:.0f} s, peak PSS "
                  f"{outputs['nnUNetv2_predict'][1] / 2 ** 30:.2f} GiB; stunet-predict "
                  f"{outputs['stunet-predict'][0]:.0f} s, {outputs['stunet-predict'][1] / 2 ** 30:.2f} GiB."]
    write_results(lines, args.results)


if __name__ == "__main__":
    main()
