"""stunet-evaluate against the per-label loop over DeepMind's surface-distance, on one whole-body label-map pair.

    python benchmarks/evaluate.py [--shape 256 256 300] [--labels 105] [--work /tmp/stunet_bench_evaluate]
                                  [--skip-reference]

Input: a synthetic whole-body label map (generated once, cached in --work) of ``--shape`` voxels (x y z) at 1.5 ×
1.5 × 1.6 mm with ``--labels`` labels, drawn like TotalSegmentator's classes: large organs (ellipsoids), a column of
vertebrae, pairs of curved ribs, long thin vessels and muscles along z, small glands; and a prediction made from it
the way models err: every label shifted by up to 1 voxel per axis, a third of them dilated or eroded by one voxel,
three labels missed, five with a stray blob far away (which stretches their bounding box over much of the body) and
two predicted where the reference has none. Metrics: Dice, NSD at 1 mm, HD95, ASSD (stunet-evaluate's default and
volumes).

1. The work itself, in a process of its own, timed after the imports: ``stunet.evaluation.evaluate`` (reading both
   files, all labels, metrics.csv and summary.json) with 2 and 1 processes, and the reference: reading both files,
   then for each label ``surface_distance.compute_surface_distances(ref == l, pred == l, spacing)`` with its Dice,
   NSD, HD95 and average surface distances (the per-label full-volume loop; labels empty on either side skip the
   surface part, as surface-distance 0.1 fails on them under numpy 2). Our time as a ratio of the reference's.
2. The command, end to end: ``stunet-evaluate`` with ``-np 2`` and ``-np 1`` (Python's start-up, ``import stunet``,
   which imports PyTorch, and report.html included).
3. Peak memory (PSS and RSS) of each process tree, sampled every 0.2 s; and the agreement: the largest difference in
   NSD and Dice and the largest relative difference in HD95 and ASSD between ours and the reference.

Results: benchmarks/results/evaluate_cpu.md (``--shape 512 512 600`` is a whole-body CT's full size).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from machine import describe
from process_monitor import run_measured

SPACING_XYZ = (1.5, 1.5, 1.6)
GIB = 1024 ** 3


# -- the synthetic pair ------------------------------------------------------------------------------------------------
def _ellipsoid(volume, label, centre, radii, rng, rotate=True):
    """Draw an ellipsoid (radii in voxels, axes z y x) into ``volume``, inside its bounding box only."""
    centre, radii = np.asarray(centre, float), np.asarray(radii, float)
    reach = int(math.ceil(radii.max())) + 1
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij"), -1)
    if rotate:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        grid = grid @ q
    inside = ((grid / radii) ** 2).sum(-1) <= 1.0
    volume[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = label


def synthetic_pair(shape_zyx, n_labels, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = shape_zyx
    ref = np.zeros(shape_zyx, np.uint8 if n_labels < 256 else np.uint16)
    s = min(y, x) / 256  # sizes scale with the grid
    labels = iter(range(1, n_labels + 1))
    drawn = []

    def draw(centre, radii, rotate=True):
        label = next(labels, None)
        if label is None:
            return
        _ellipsoid(ref, label, centre, radii, rng, rotate)
        drawn.append(label)

    for _ in range(12):  # organs
        draw((rng.uniform(0.3, 0.7) * z, rng.uniform(0.35, 0.65) * y, rng.uniform(0.3, 0.7) * x),
             rng.uniform(8, 40, 3) * s)
    for k in range(24):  # vertebrae along z
        draw(((k + 0.5) / 24 * z, 0.62 * y, 0.5 * x), (0.35 * z / 24, 9 * s, 10 * s), rotate=False)
    for k in range(12):  # rib pairs: arcs of small balls
        zk = (0.35 + 0.4 * k / 12) * z
        for side in (-1, 1):
            label = next(labels, None)
            if label is None:
                break
            for t in np.linspace(0.1, 1.3, 40):
                _ellipsoid(ref, label, (zk + 6 * s * t, 0.5 * y - 70 * s * math.cos(t) * 0.9,
                                        0.5 * x + side * 95 * s * math.sin(t)), (2.5 * s, 2.5 * s, 2.5 * s), rng,
                           rotate=False)
            drawn.append(label)
    for _ in range(16):  # vessels and muscles along z
        draw((0.5 * z, rng.uniform(0.3, 0.7) * y, rng.uniform(0.25, 0.75) * x),
             (rng.uniform(0.2, 0.45) * z, rng.uniform(2, 12) * s, rng.uniform(2, 12) * s), rotate=False)
    while True:  # glands and the rest
        label = next(labels, None)
        if label is None:
            break
        _ellipsoid(ref, label, (rng.uniform(0.1, 0.9) * z, rng.uniform(0.3, 0.7) * y, rng.uniform(0.25, 0.75) * x),
                   rng.uniform(2, 10, 3) * s, rng)
        drawn.append(label)

    from scipy import ndimage
    pred = np.zeros_like(ref)
    boxes = ndimage.find_objects(ref)
    present = [v for v in drawn if v <= len(boxes) and boxes[v - 1] is not None]
    missed = set(rng.choice(present, 3, replace=False).tolist())
    for value in present:
        if value in missed:
            continue
        box = tuple(slice(max(b.start - 3, 0), min(b.stop + 3, n)) for b, n in zip(boxes[value - 1], ref.shape))
        mask = ref[box] == value
        change = rng.random()
        if change < 0.15:
            mask = ndimage.binary_dilation(mask)
        elif change < 0.3:
            mask = ndimage.binary_erosion(mask)
        mask = np.roll(mask, tuple(rng.integers(-1, 2, 3)), axis=(0, 1, 2))
        pred[box][mask] = value
    for value in rng.choice([v for v in present if v not in missed], 5, replace=False):  # stray blobs
        _ellipsoid(pred, int(value), (rng.uniform(0.1, 0.9) * z, rng.uniform(0.3, 0.7) * y,
                                      rng.uniform(0.2, 0.8) * x), (3 * s, 3 * s, 3 * s), rng)
    unused = [v for v in range(1, n_labels + 1) if v not in present][:2] or [n_labels]
    for value in unused:  # predicted, absent from the reference
        _ellipsoid(pred, value, (0.5 * z, 0.5 * y, 0.5 * x), (4 * s, 4 * s, 4 * s), rng)
    return ref, pred


def prepared(work: Path, shape_xyz, n_labels) -> tuple[Path, Path]:
    tag = f"{'x'.join(map(str, shape_xyz))}_{n_labels}"
    ref_dir, pred_dir = work / f"ref_{tag}", work / f"pred_{tag}"
    if not (ref_dir / "wholebody.nii.gz").exists() or not (pred_dir / "wholebody.nii.gz").exists():
        ref, pred = synthetic_pair(tuple(reversed(shape_xyz)), n_labels)
        for folder, array in ((ref_dir, ref), (pred_dir, pred)):
            folder.mkdir(parents=True, exist_ok=True)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(image, str(folder / "wholebody.nii.gz"))
        (pred_dir / "labels.json").write_text(json.dumps({str(i): f"structure_{i}" for i in range(n_labels + 1)}))
    return ref_dir, pred_dir


# -- the reference loop (run in its own process) ----------------------------------------------------------------------
def reference_loop(ref_dir: Path, pred_dir: Path, n_labels: int, out: Path) -> None:
    import surface_distance as sd
    import warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    start = time.perf_counter()
    image = sitk.ReadImage(str(ref_dir / "wholebody.nii.gz"))
    ref = sitk.GetArrayFromImage(image)
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / "wholebody.nii.gz")))
    spacing = tuple(reversed(image.GetSpacing()))
    read = time.perf_counter() - start
    rows = []
    for label in range(1, n_labels + 1):
        a, b = ref == label, pred == label
        row = {"label": label, "dice": float("nan"), "nsd": float("nan"), "hd95": float("nan"),
               "assd": float("nan")}
        if a.any() and b.any():
            d = sd.compute_surface_distances(a, b, spacing)
            row.update(dice=float(sd.compute_dice_coefficient(a, b)),
                       nsd=float(sd.compute_surface_dice_at_tolerance(d, 1.0)),
                       hd95=float(sd.compute_robust_hausdorff(d, 95)),
                       assd=float(np.mean(sd.compute_average_surface_distance(d))))
        rows.append(row)
    out.write_text(json.dumps({"read_s": read, "total_s": time.perf_counter() - start, "rows": rows}))


def ours_timed(ref_dir: Path, pred_dir: Path, out: Path, processes: int) -> None:
    from stunet.evaluation.evaluate import evaluate
    start = time.perf_counter()
    evaluate(ref_dir, pred_dir, out, num_processes=processes, report=False)
    (out / "timing.json").write_text(json.dumps({"total_s": time.perf_counter() - start}))


# -- comparison --------------------------------------------------------------------------------------------------------
def agreement(metrics_csv: Path, reference_json: Path) -> dict:
    ours = {int(r["label"]): r for r in csv.DictReader(open(metrics_csv))}
    theirs = json.loads(reference_json.read_text())["rows"]
    nsd, rel, dice, compared = 0.0, 0.0, 0.0, 0
    for row in theirs:
        if math.isnan(row["nsd"]):
            continue
        mine = ours[row["label"]]
        compared += 1
        nsd = max(nsd, abs(float(mine["nsd"]) - row["nsd"]))
        dice = max(dice, abs(float(mine["dice"]) - row["dice"]))
        for m in ("hd95", "assd"):
            if row[m] > 0:
                rel = max(rel, abs(float(mine[m]) - row[m]) / row[m])
    return {"labels": compared, "nsd": nsd, "dice": dice, "distance_rel": rel}


def _measured(command, log):
    wall, rss, pss = run_measured(command, log=log, pss=True)
    return {"wall": wall, "rss": rss, "pss": pss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 300], metavar=("X", "Y", "Z"))
    parser.add_argument("--labels", type=int, default=105)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_evaluate"))
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "evaluate_cpu.md")
    parser.add_argument("--reference-loop", nargs=3, metavar=("REF", "PRED", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--ours", nargs=4, metavar=("REF", "PRED", "OUT", "NP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_loop:
        ref_dir, pred_dir, out = map(Path, args.reference_loop)
        reference_loop(ref_dir, pred_dir, args.labels, out)
        return
    if args.ours:
        ours_timed(Path(args.ours[0]), Path(args.ours[1]), Path(args.ours[2]), int(args.ours[3]))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    ref_dir, pred_dir = prepared(args.work, args.shape, args.labels)
    tag = f"{'x'.join(map(str, args.shape))}_{args.labels}"
    voxels = math.prod(args.shape)
    work, command, ratio_of = {}, {}, None
    if not args.skip_reference:
        out = args.work / f"reference_{tag}.json"
        measured = _measured([sys.executable, __file__, "--labels", str(args.labels), "--reference-loop",
                              str(ref_dir), str(pred_dir), str(out)], args.work / "reference.log")
        reference = json.loads(out.read_text())
        ratio_of = reference["total_s"]
        print(f"surface-distance loop: {reference['total_s']:.1f} s (process {measured['wall']:.1f} s), peak PSS "
              f"{measured['pss'] / GIB:.2f} GiB")
    for processes in (2, 1):
        out = args.work / f"ours_{tag}_np{processes}"
        work[processes] = _measured([sys.executable, __file__, "--ours", str(ref_dir), str(pred_dir), str(out),
                                     str(processes)], args.work / f"ours_np{processes}.log")
        work[processes]["total_s"] = json.loads((out / "timing.json").read_text())["total_s"]
        print(f"stunet.evaluation.evaluate, {processes} process(es): {work[processes]['total_s']:.1f} s, peak PSS "
              f"{work[processes]['pss'] / GIB:.2f} GiB")
        out = args.work / f"command_{tag}_np{processes}"
        command[processes] = _measured([sys.executable, "-c", "from stunet.cli.evaluate import main; main()",
                                        "-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "-np",
                                        str(processes), "--quiet"], args.work / f"command_np{processes}.log")
        print(f"stunet-evaluate -np {processes}: {command[processes]['wall']:.1f} s, peak PSS "
              f"{command[processes]['pss'] / GIB:.2f} GiB")
    if ratio_of:
        agree = agreement(args.work / f"ours_{tag}_np2" / "metrics.csv", args.work / f"reference_{tag}.json")
        print(f"agreement over {agree['labels']} labels: NSD {agree['nsd']:.2e}, Dice {agree['dice']:.2e}, "
              f"HD95/ASSD relative {agree['distance_rel']:.2e}")

    import torch  # machine.describe takes a torch device
    shape = "×".join(map(str, args.shape))
    lines = [f"Input: a synthetic whole-body label-map pair, {shape} voxels (x y z; {voxels / 1e6:.1f}M) at "
             f"{' × '.join(map(str, SPACING_XYZ))} mm, {args.labels} labels (benchmarks/evaluate.py); metrics "
             f"dice, nsd (1 mm), hd95, assd, volumes.",
             f"Machine: {describe('cpu')}, numpy {np.__version__}, torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d')}. Command: `python benchmarks/evaluate.py --shape "
             f"{' '.join(map(str, args.shape))} --labels {args.labels}`.", "",
             "| run | time (s) | ratio to the surface-distance loop | peak PSS (GiB) | peak RSS (GiB) |",
             "|---|---|---|---|---|"]
    if ratio_of:
        lines.append(f"| per-label surface-distance loop (reading included) | {ratio_of:.1f} | 1.00× | "
                     f"{measured['pss'] / GIB:.2f} | {measured['rss'] / GIB:.2f} |")
    for processes in (2, 1):
        ratio = f"**{work[processes]['total_s'] / ratio_of:.3f}×**" if ratio_of else "-"
        lines.append(f"| stunet.evaluation.evaluate, {processes} process{'es' if processes > 1 else ''} (reading "
                     f"included) | {work[processes]['total_s']:.1f} | {ratio} | {work[processes]['pss'] / GIB:.2f} | "
                     f"{work[processes]['rss'] / GIB:.2f} |")
    for processes in (2, 1):
        ratio = f"{command[processes]['wall'] / ratio_of:.3f}×" if ratio_of else "-"
        lines.append(f"| `stunet-evaluate -np {processes}` end to end (start-up, import, report.html) | "
                     f"{command[processes]['wall']:.1f} | {ratio} | {command[processes]['pss'] / GIB:.2f} | "
                     f"{command[processes]['rss'] / GIB:.2f} |")
    if ratio_of:
        lines += ["", f"Agreement with surface-distance over the {agree['labels']} labels present on both sides: "
                      f"largest NSD difference {agree['nsd']:.1e}, Dice {agree['dice']:.1e}, largest relative HD95 "
                      f"or ASSD difference {agree['distance_rel']:.1e}."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a" if args.results.exists() else "w") as f:
        f.write(("\n" if args.results.exists() and args.results.stat().st_size else "") + text)


if __name__ == "__main__":
    main()
