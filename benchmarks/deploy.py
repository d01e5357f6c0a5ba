"""stunet-predict with --backend torch, onnxruntime and openvino (fp32, bf16) on the same real CT, side by side.

    python benchmarks/deploy.py [--checkpoint small_ep4k.model] [--work /tmp/stunet_bench_deploy] [--rounds 2]

Measures, for each backend and precision, the whole command's wall time and peak resident memory (summed over its
process tree), the forward passes' share (the command's "network" seconds), and the agreement of its labels with
--backend torch at fp32 (Dice per label: mean and minimum over the foreground labels either holds; identical voxels).
Every command runs on the CPU without test-time mirroring, step 0.5, one worker process, all cores to the engine;
torch with the project's own CPU path (stunet-predict calls reuse_freed_memory()).

The first use of an engine exports the features graph, checks it against PyTorch and compiles it (cached beside the
weights, docs/deployment.md): the cache is emptied first and that run reported on its own line. Then ``--rounds``
rounds run every configuration once each, interleaved, so that a busy moment of a shared machine falls on all of them
alike; each configuration's figures are from its fastest round.

Input and weights as benchmarks/predict.py: the example CT of ../shared/data/totalsegmentator_examples (3 mm) stacked
to 122×101×112 (27 tiles of 128³ at 1.5 mm), and the released small_ep4k.model when given, else a 105-class
STU-Net-S fitted to that CT's reference segmentation for --fit-iterations (800; cached in --work): with the 240 of
benchmarks/predict.py its outputs are unconfident enough that float rounding alone flips hundreds of voxels.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from machine import describe
from predict import BIN, command_env, prepared
from process_monitor import run_measured

CONFIGURATIONS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
                  ("torch", "bf16")]
GOALS = {("openvino", "fp32"): 0.9, ("openvino", "bf16"): 0.5}  # of torch fp32's time


def command(image: Path, out: Path, checkpoint: Path, backend: str, precision: str, tta: bool) -> list[str]:
    return [str(BIN / "stunet-predict"), "-i", str(image.parent), "-o", str(out), "--pretrained",
            "stunet_small.totalseg104", "--checkpoint", str(checkpoint), "--device", "cpu", "--overwrite",
            "--backend", backend, "--precision", precision, *([] if tta else ["--disable-tta"])]


def network_seconds(log: Path) -> float:
    """The "network N s" of the command's per-case line."""
    found = re.findall(r"network ([0-9.]+) s", log.read_text())
    return float(found[-1]) if found else float("nan")


def agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float, int, float]:
    labels = sorted((set(np.unique(ours)) | set(np.unique(reference))) - {0})
    scores = [2 * np.sum((ours == l) & (reference == l)) / (np.sum(ours == l) + np.sum(reference == l))
              for l in labels]
    return float(np.mean(scores)), float(np.min(scores)), len(labels), float(np.mean(ours == reference))


def versions() -> str:
    found = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino", "onnx"):
        try:
            module = __import__(name)
            found.append(f"{name} {module.__version__.split('-')[0]}")
        except ImportError:
            found.append(f"{name} missing")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="small_ep4k.model (released weights); default: fitted")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_deploy"))
    parser.add_argument("--fit-iterations", type=int, default=800,
                        help="of the fitted weights (800: confident enough that rounding rarely decides a voxel; "
                             "benchmarks/predict.py's 240 leave many near-ties)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="with mirroring (8 forward passes per tile)")
    parser.add_argument("--no-torch-bf16", action="store_true", help="leave out torch at bf16 (context only)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "deploy_cpu.md")
    args = parser.parse_args()
    work = args.work
    image, checkpoint = prepared(work, args.checkpoint or work / f"fitted_small_{args.fit_iterations}.model",
                                 args.fit_iterations)
    env = command_env(work)
    configurations = [c for c in CONFIGURATIONS if not (args.no_torch_bf16 and c == ("torch", "bf16"))]
    shutil.rmtree(checkpoint.parent / "stunet-deploy", ignore_errors=True)  # first use: export, check, compile

    first = {}
    for backend in ("onnxruntime", "openvino"):
        name = f"{backend}-first"
        print(f"first use of {backend} ...", flush=True)
        wall, rss = run_measured(command(image, work / f"out_{name}", checkpoint, backend, "fp32", args.tta), env,
                                 work / f"{name}.log")
        first[backend] = (wall, rss)
        print(f"  {wall:.1f} s, peak {rss / 2 ** 30:.2f} GiB", flush=True)

    results: dict[tuple[str, str], list[tuple[float, int, float]]] = {c: [] for c in configurations}
    for round_ in range(args.rounds):
        for backend, precision in configurations:
            name = f"{backend}-{precision}"
            print(f"round {round_ + 1}: {name} ...", flush=True)
            log = work / f"{name}-{round_}.log"
            wall, rss = run_measured(command(image, work / f"out_{name}", checkpoint, backend, precision, args.tta),
                                     env, log)
            results[(backend, precision)].append((wall, rss, network_seconds(log)))
            print(f"  {wall:.1f} s (network {results[(backend, precision)][-1][2]:.1f} s), peak "
                  f"{rss / 2 ** 30:.2f} GiB", flush=True)

    best = {c: min(runs) for c, runs in results.items()}  # the fastest round of each
    base_wall, base_rss, base_network = best[("torch", "fp32")]
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out_torch-fp32" / "ct.nii.gz")))
    rows, verdicts = [], []
    for (backend, precision), (wall, rss, net) in best.items():
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"out_{backend}-{precision}" / "ct.nii.gz")))
        mean, worst, n, same = agreement(labels, reference)
        walls = ", ".join(f"{w:.1f}" for w, _, _ in results[(backend, precision)])
        rows.append(f"| {backend} | {precision} | {wall:.1f} ({walls}) | {wall / base_wall:.2f}× | {net:.1f} | "
                    f"{net / base_network:.2f}× | {rss / 2 ** 30:.2f} | {rss / base_rss:.2f}× | "
                    f"{mean:.4f} (min {worst:.4f}, {n} labels) | {100 * same:.3f} % |")
        goal = GOALS.get((backend, precision))
        if goal is not None:
            verdicts.append(f"- {backend} {precision}: {wall / base_wall:.2f}× torch fp32's time (goal ≤ {goal}×: "
                            f"{'met' if wall / base_wall <= goal else 'missed'}), peak memory {rss / base_rss:.2f}× "
                            f"(goal ≤ 1×: {'met' if rss <= base_rss else 'missed'})")
        if precision == "fp32" and backend != "torch":
            verdicts.append(f"- {backend} fp32: mean Dice {mean:.4f} against torch (goal ≥ 0.999: "
                            f"{'met' if mean >= 0.999 else 'missed'})")
    first_rows = [f"| {backend} | {wall:.1f} | {wall - best[(backend, 'fp32')][0]:.1f} | {rss / 2 ** 30:.2f} |"
                  for backend, (wall, rss) in first.items()]
    table = "\n".join([
        f"Input: 122×101×112 CT at 3 mm (27 tiles of 128³ at 1.5 mm), 105-class STU-Net-S "
        f"({'released' if args.checkpoint else f'weights fitted to this CT, {args.fit_iterations} iterations'}), "
        f"{'mirroring' if args.tta else 'no mirroring'}, "
        f"step 0.5, CPU, one process.",
        f"Machine: {describe()}; {versions()}; {time.strftime('%Y-%m-%d')}. "
        f"Command: `python benchmarks/deploy.py{' --tta' if args.tta else ''} --rounds {args.rounds}`.", "",
        f"Whole `stunet-predict` per backend, fastest of {args.rounds} interleaved rounds (all rounds' wall times in "
        f"brackets); ratios against `--backend torch --precision fp32` in the same run; agreement of the labels with "
        f"torch fp32's:", "",
        "| backend | precision | wall (s) | time vs torch | network (s) | network vs torch | peak RSS (GiB) | "
        "RSS vs torch | Dice vs torch fp32 (mean over labels) | identical voxels |",
        "|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "First use (cache empty: export of the features graph, check against PyTorch, compilation), fp32:", "",
        "| backend | wall (s) | extra over a cached run (s) | peak RSS (GiB) |", "|---|---|---|---|", *first_rows, "",
        "Goals:", "", *verdicts])
    print("\n" + table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
