"""``stunet-evaluate``: compare predicted label images with reference ones, case by case and label by label.

Writes OUT/metrics.csv (one row per case and label), OUT/summary.json (per label and over labels: mean, median, std,
count of each metric; the empty cases) and OUT/report.html (one self-contained page: every case, the worst and the
quality-flagged ones drawn, per fold for a cross-validation), as one set: with --no-report an
earlier run's report.html is removed; Ctrl-C ends the run with one line, exit status 130, nothing written. See
docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser, interrupt_ends, printable
from stunet.evaluation.metrics import DEFAULT_METRICS, DEFAULT_NSD_TOLERANCE_MM, METRICS, STEMS, SUITES

EPILOG = f"""metrics (columns of metrics.csv): {', '.join(METRICS)}; or the stems {', '.join(STEMS)}.
suites: """ + "; ".join(f"{name} = {', '.join(m)} ({what})" for name, (m, _, what) in SUITES.items()) + """.

examples:
  stunet-evaluate -ref $nnUNet_raw/Dataset004_Liver/labelsTr -pred segs/ -o eval/
  stunet-evaluate -ref $nnUNet_raw/Dataset022_FLARE22 -pred $nnUNet_results/Dataset022_FLARE22/STUNetTrainer_base_ft__nnUNetPlans__3d_fullres -o eval/ --suite flare
  stunet-evaluate -ref labelsTs/ -pred segs/ -o eval/ --metrics dice hd95 volume --nsd-tolerance 1 --nsd-tolerance liver=2
  stunet-evaluate -ref labelsTs/ -pred segs/ -o eval/ --images imagesTs/"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("stunet-evaluate", description=__doc__.split(": ", 1)[1].split("\n\n")[0], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", "--reference", type=Path, required=True,
                   help="reference label images: a folder (labelsTr), or a dataset folder holding labelsTr")
    p.add_argument("-pred", "--prediction", type=Path, required=True,
                   help="predicted label images: a folder (stunet-predict output, fold_N/validation), or a trainer "
                        "folder holding fold_*/validation (all folds' validation cases)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help=f"metrics to compute (default: {' '.join(DEFAULT_METRICS)}; with --suite, added to its own)")
    p.add_argument("--suite", choices=sorted(SUITES), help="a challenge's metrics: " + "; ".join(
        f"{name}: {', '.join(m)}" for name, (m, _, _) in SUITES.items()))
    p.add_argument("--nsd-tolerance", action="append", metavar="MM|NAME=MM",
                   help=f"NSD tolerance in mm (default {DEFAULT_NSD_TOLERANCE_MM:g}, FLARE's); repeat with "
                        f"NAME=MM for a label's own, e.g. --nsd-tolerance 1 --nsd-tolerance liver=2")
    p.add_argument("--labels", type=Path, metavar="JSON",
                   help="label names and values: nnU-Net's dataset.json or a labels.json (default: the predictions' "
                        "labels.json, the dataset.json of the reference's dataset folder or of the predictions' trainer "
                        "folder, else every label found, as label_N)")
    p.add_argument("--images", type=Path, metavar="FOLDER",
                   help="the cases' images (imagesTr: case_0000.nii.gz, or case.nii.gz; or a dataset folder): the "
                        "report draws the worst and the flagged cases' contours over them, else over the masks")
    p.add_argument("-np", "--num-processes", type=int,
                   help="processes comparing labels in parallel (default: the CPU cores, at most 2)")
    p.add_argument("--no-report", action="store_true", help="skip report.html (an earlier one in OUT is removed)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


@cli_entry("stunet-evaluate")
def main(argv=None) -> None:
    with interrupt_ends("stunet-evaluate"):
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.num_processes is not None and args.num_processes < 1:
            parser.error("-np must be 1 or more")
        from stunet.evaluation.evaluate import evaluate, print_progress

        rows = evaluate(args.reference, args.prediction, args.output, metrics=args.metrics,
                        nsd_tolerance=args.nsd_tolerance, suite=args.suite, labels=args.labels,
                        num_processes=args.num_processes, report=not args.no_report,
                        progress=None if args.quiet else print_progress, images=args.images,
                        command=shlex.join(["stunet-evaluate", *(sys.argv[1:] if argv is None else map(str, argv))]))
    cases = len({r["case"] for r in rows})
    dice = [r["dice"] for r in rows if "dice" in r and not math.isnan(r["dice"])]
    extra = f", mean Dice {sum(dice) / len(dice):.4f}" if dice else ""
    written = "metrics.csv, summary.json" + ("" if args.no_report else ", report.html")
    print(f"stunet-evaluate: {cases} case(s), {len(rows)} rows{extra}; {written} in {printable(args.output)}")
