"""``stunet-totalseg``: convert a TotalSegmentator-layout dataset into an nnU-Net v2 raw dataset."""
from __future__ import annotations

import argparse
import json
import os
import sys
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from stunet.cli.errors import cli_entry
from stunet.nnunet.totalseg import (OVERLAP_RULE, check_dataset_target, convert_subject, label_order, plan_conversion, write_dataset_files, write_marker)


def _convert(job):
    subject, image, label, labels = job
    try:
        return subject.name, convert_subject(subject, labels, image, label), None
    except Exception as e:  # one broken subject must not stop the others
        return subject.name, [], f"{subject}: {type(e).__name__}: {e}"


@cli_entry("stunet-totalseg")
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stunet-totalseg", description=__doc__.split(": ", 1)[1] + ". " +
                                     OVERLAP_RULE.capitalize() + "; structures without a mask become background.")
    parser.add_argument("source", type=Path, help="folder of <subject>/ct.nii.gz + segmentations/, and meta.csv")
    parser.add_argument("-d", "--dataset-id", type=int, required=True, help="nnU-Net dataset id, e.g. 601")
    parser.add_argument("--name", default="TotalSegmentator", help="dataset name (Dataset<id>_<name>)")
    parser.add_argument("--labels", choices=["totalseg104", "totalseg_v2_117"], default="totalseg104",
                        help="label order: the released STU-Nets' (default) or TotalSegmentator v2's 117 classes")
    parser.add_argument("--raw", type=Path, default=os.environ.get("nnUNet_raw"),
                        help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("-np", "--num-processes", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true",
                        help="convert subjects already converted again, and write into a dataset folder that another "
                             "conversion (other source or label order) made")
    args = parser.parse_args(argv)
    if args.raw is None:
        parser.error("set nnUNet_raw or pass --raw")
    labels = label_order(args.labels)
    try:
        folder = check_dataset_target(args.raw, args.dataset_id, args.name, args.source, args.labels, args.overwrite)
        jobs = plan_conversion(args.source, folder)
    except ValueError as e:
        parser.exit(2, f"stunet-totalseg: error: {e}\n")
    write_marker(folder, args.source, args.labels)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    todo = [(s, i, l, labels) for s, i, l in jobs if args.overwrite or not (i.is_file() and l.is_file())]
    print(f"stunet-totalseg: {len(jobs)} subjects in {args.source}, {len(jobs) - len(todo)} already converted; "
          f"writing {folder} ({args.labels})", file=sys.stderr)
    missing, failed = {}, []
    with get_context("spawn").Pool(max(1, args.num_processes)) as pool:
        for name, absent, error in tqdm(pool.imap_unordered(_convert, todo), total=len(todo), unit="subject"):
            if error:
                failed.append(error)
                tqdm.write(f"stunet-totalseg: error: {error}", file=sys.stderr)
            elif absent:
                missing[name] = absent
                tqdm.write(f"stunet-totalseg: warning: {name}: {len(absent)} structure(s) without a mask became "
                           f"background ({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})",
                           file=sys.stderr)
    for worker_folder in (folder / ".stunet-partial").glob("*"):
        if not any(worker_folder.iterdir()):
            worker_folder.rmdir()
    write_dataset_files(args.source, folder, labels, args.labels, jobs)
    if missing:
        (folder / "missing_structures.json").write_text(json.dumps(missing, indent=2))
    print(f"stunet-totalseg: {len(todo) - len(failed)} converted, {len(failed)} failed; {len(missing)} subject(s) "
          f"with missing structures" + (f" (see {folder / 'missing_structures.json'})" if missing else ""),
          file=sys.stderr)
    if failed:
        sys.exit(1)
