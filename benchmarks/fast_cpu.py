"""A CT in a whole-body field of view on the CPU: the exact path with and without skipping the tiles that hold no body,
and ``--speed fastest``, in one run.

    python benchmarks/fast_cpu.py [--work /tmp/stunet_bench_fast] [--fov-mm 500] [--slices 240] [--scale 1.0]

Input: the example CT of ../shared (a 366×303 mm abdomen at 3 mm, cropped to the body) stacked along z, resampled to
0.8 mm and placed at ``--scale`` times its physical size in the middle of a ``--fov-mm`` square field of air
(-1024 HU with the noise of the CT's own air), ``--slices`` slices of 0.8 mm. Model: the 105-class STU-Net-S fitted
to that CT by benchmarks/predict.py (``--fit-iterations``; cached in --work as fitted_small.model, whatever the
count: delete it to fit again; 0 keeps the untrained weights, which time the same but agree less between
precisions); no mirroring, step 0.5, CPU.

Runs ``stunet-predict`` (one case, start-up and loading included) with ``--no-skip`` (the path before skipping),
the default (tiles holding no body skipped) and ``--speed fastest``; per run the wall time, the phases and tiles the
command reports, peak PSS and RSS of its process tree, and per-label Dice of its labels against the ``--no-skip``
run's (mean and minimum over the labels either holds). Also the tiles a body of each of several sizes leaves to the
network in this field (no network run). Machine and load average (before and after) are recorded.

Results: benchmarks/results/fast_cpu.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from machine import describe
from pipeline import phases, write_results
from predict import BIN, EXAMPLE, command_env, dice_agreement, prepared
from process_monitor import run_measured


def make_case(folder: Path, fov_mm: float, slices: int, scale: float) -> Path:
    """The example CT in a square field of air (see the module's docstring), cached in ``folder``."""
    from scipy.ndimage import zoom

    path = folder / f"fov{fov_mm:g}_z{slices}_s{scale:g}" / "ct_0000.nii.gz"
    if path.exists():
        return path
    ct = sitk.ReadImage(str(EXAMPLE / "example_ct_sm.nii.gz"))
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    reps = int(np.ceil(slices * 0.8 / (array.shape[0] * ct.GetSpacing()[2]))) + 1
    stacked = np.concatenate([array] * reps, axis=0)
    factors = [ct.GetSpacing()[2] / 0.8, scale * ct.GetSpacing()[1] / 0.8, scale * ct.GetSpacing()[0] / 0.8]
    body = zoom(stacked, factors, order=1)[:slices]
    side = int(round(fov_mm / 0.8))
    rng = np.random.default_rng(0)
    air = array[array < -900]
    field = (-1024 + rng.normal(0, float(air.std()), (slices, side, side))).astype(np.float32)
    y0, x0 = (side - body.shape[1]) // 2, (side - body.shape[2]) // 2
    field[:, y0:y0 + body.shape[1], x0:x0 + body.shape[2]] = body
    image = sitk.GetImageFromArray(np.clip(field, -1024, 3071).astype(np.int16))
    image.SetSpacing((0.8, 0.8, 0.8))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def tiles_left(fov_mm: float, widths_mm: list[tuple[float, float]], patch: int = 128, spacing: float = 1.5) -> list:
    """For bodies of (width, depth) mm centred in the field: (tiles per plane, of them run) of the sliding window."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from stunet.prediction.body import MARGIN

    side = int(round(fov_mm / spacing))
    starts = compute_steps_for_sliding_window((side, side), (patch, patch), 0.5)[0]
    rows = []
    for width, depth in widths_mm:
        def meets(start, extent):
            low, high = (side - extent / spacing) / 2, (side + extent / spacing) / 2
            return start - MARGIN < high and start + patch + MARGIN > low
        run = sum(meets(y, depth) and meets(x, width) for y in starts for x in starts)
        rows.append((width, depth, len(starts) ** 2, run))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_fast"))
    parser.add_argument("--fov-mm", type=float, default=500)
    parser.add_argument("--slices", type=int, default=240)
    parser.add_argument("--scale", type=float, default=1.0, help="of the example CT's physical size (1: an adult "
                                                                  "abdomen, 366×303 mm)")
    parser.add_argument("--fit-iterations", type=int, default=120)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "fast_cpu.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    _, checkpoint = prepared(args.work, iterations=args.fit_iterations)
    image = make_case(args.work / "cases", args.fov_mm, args.slices, args.scale)
    env = command_env(args.work)
    base = [str(BIN / "stunet-predict"), "-i", str(image.parent), "--pretrained", "stunet_small.totalseg104",
            "--checkpoint", str(checkpoint), "--disable-tta", "--device", "cpu", "--overwrite"]
    configurations = {"exact, --no-skip (before)": ["--no-skip"], "exact (skip on)": [],
                      "--speed fastest (skip on)": ["--speed", "fastest"]}
    results = {}
    for name, extra in configurations.items():
        out = args.work / f"out_{len(results)}"
        log = args.work / f"fast_{len(results)}.log"
        print(f"{name} ...", flush=True)
        wall, rss, pss = run_measured(base + extra + ["-o", str(out)], env, log, pss=True)
        record = json.loads((out / "provenance.json").read_text())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "ct.nii.gz")))
        results[name] = dict(wall=wall, rss=rss, pss=pss, phases=phases(log), labels=labels,
                             case=record["cases"]["ct"], engine=record["options"].get("speed_choice") or "torch fp32")
        print(f"  {wall:.1f} s, {results[name]['case']}", flush=True)
    reference = results["exact, --no-skip (before)"]
    rows = []
    for name, r in results.items():
        mean, worst, n = dice_agreement(reference["labels"], r["labels"])
        rows.append(f"| {name} | {r['engine']} | {r['case']['tiles']} | {r['case']['skipped_tiles']} | {r['wall']:.1f} "
                    f"| {r['wall'] / reference['wall']:.2f}× | {r['phases'].get('network', float('nan')):.1f} | "
                    f"{mean:.4f}, {worst:.4f} ({n}) | {r['pss'] / 2 ** 30:.2f} / {r['rss'] / 2 ** 30:.2f} |")
    geometry = tiles_left(args.fov_mm, [(366 * s, 303 * s) for s in (1.0, 0.75, 0.5, 0.35, 0.25)])
    shape = sitk.ReadImage(str(image)).GetSize()
    lines = [
        f"CT in a {args.fov_mm:g} mm field of view: the example CT (abdomen, 366×303 mm, at {args.scale:g}× its size) "
        f"in air, {shape[0]}×{shape[1]}×{shape[2]} voxels at 0.8 mm; 105-class STU-Net-S (fitted "
        f"{args.fit_iterations} iterations), no mirroring, step 0.5, CPU.",
        f"Machine: {describe()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; load average (1, 5, 15 "
        f"min) before {', '.join(f'{x:.1f}' for x in load_before)}, after "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (the CPU was shared). Command: `python "
        f"benchmarks/fast_cpu.py --fov-mm {args.fov_mm:g} --slices {args.slices} --scale {args.scale:g}`.", "",
        "| run | engine | tiles | skipped | wall (s) | wall vs before | network (s) | Dice vs before (mean, min, labels) "
        "| peak PSS / RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Tiles per plane of a {args.fov_mm:g} mm field (128² at 1.5 mm, step 0.5) that a body of this size, centred, "
        f"leaves to the network (margin included; no network run):", "",
        "| body width × depth (mm) | tiles per plane | run | skipped |", "|---|---|---|---|",
        *[f"| {w:.0f} × {d:.0f} | {t} | {r} | {t - r} |" for w, d, t, r in geometry]]
    write_results(lines, args.results)


if __name__ == "__main__":
    main()
