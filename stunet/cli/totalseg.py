"""``stunet-totalseg``: convert a TotalSegmentator-layout dataset into an nnU-Net v2 raw dataset."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

from stunet.cli.errors import cli_entry, command_parser, one_line, printable
from stunet.nnunet.totalseg import (OVERLAP_RULE, check_dataset_target, convert_subject, label_order, plan_conversion,
                                    write_dataset_files, write_marker)

DIED = ("the process converting it died without a Python error (a library such as ITK aborted or crashed on its "
        "files); nothing was written for it")


def _convert(job):
    subject, image, label, labels = job
    try:
        return subject.name, convert_subject(subject, labels, image, label), None
    except Exception as e:  # one broken subject must not stop the others
        return subject.name, [], _error_line(subject, str(e) if isinstance(e, ValueError) else
                                             f"{type(e).__name__}: {e}")


def _error_line(subject: Path, detail: str) -> str:
    """One line naming the subject: its path escaped wherever it appears (a line break in its name stays ``\\n``), the
    line breaks of the message itself (ITK's are many) joined."""
    where = str(subject)
    detail = detail if detail.startswith(where) else f"{where}: {detail}"
    return one_line(detail.replace(where, printable(where)))


def _pool(jobs: list, workers: int, convert: Callable) -> Iterator:
    """Run ``convert`` on the jobs (taken from the front of the list) in ``workers`` processes, yielding each result,
    until the list is done or a worker dies; returns the jobs that were in flight when one died (their futures all
    break with the pool, whichever of them killed it), [] otherwise. At most ``workers`` jobs are in flight, so a death
    is narrowed down to them."""
    running = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        while jobs or running:
            while jobs and len(running) < workers:
                job = jobs.pop(0)
                running[pool.submit(convert, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            lost = []
            for future in done:
                job = running.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    lost.append(job)
                else:
                    yield result
            if lost:  # the others in flight end with the pool at once: collect them too
                for future in wait(running)[0]:
                    try:
                        yield future.result()
                    except BrokenProcessPool:
                        lost.append(running[future])
                return lost
    return []


def convert_all(todo: list, processes: int, convert: Callable = _convert) -> Iterator[tuple[str, list, str | None]]:
    """(subject name, structures without a mask, error or None) for every job, in the order they finish. A worker that
    dies (ITK aborting the process, a segfault, the out-of-memory killer) fails the subject it was converting, found by
    running the jobs that were in flight again one at a time in a fresh process; it never hangs the others."""
    waiting, suspects = list(todo), []
    while waiting or suspects:
        jobs, workers = (suspects, 1) if suspects else (waiting, max(1, processes))
        lost = yield from _pool(jobs, workers, convert)
        if len(lost) == 1:
            yield lost[0][0].name, [], _error_line(lost[0][0], DIED)
        else:
            suspects.extend(lost)


def _remove_dead_workers_files(folder: Path) -> None:
    """The unfinished files of this conversion's workers (empty folders, or what a worker that died left)."""
    partial = folder / ".stunet-partial"
    if partial.is_symlink() or not partial.is_dir():
        return
    host = socket.gethostname()
    for worker_folder in partial.iterdir():
        with contextlib.suppress(OSError):
            if not worker_folder.is_dir() or worker_folder.is_symlink():
                continue
            if not any(worker_folder.iterdir()):
                worker_folder.rmdir()
            elif worker_folder.name.rpartition("-")[0] == host and not _alive(worker_folder.name.rpartition("-")[2]):
                shutil.rmtree(worker_folder)
    with contextlib.suppress(OSError):
        partial.rmdir()


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return True  # not a folder this tool names: left alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stunet-totalseg", description=__doc__.split(": ", 1)[1] + ". " +
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
    return parser


@cli_entry("stunet-totalseg")
def main(argv=None) -> None:
    from tqdm import tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.raw is None:
        parser.error("set nnUNet_raw or pass --raw")
    if args.num_processes < 1:
        parser.error(f"--num-processes {args.num_processes}: at least 1")
    labels = label_order(args.labels)
    try:
        folder = check_dataset_target(args.raw, args.dataset_id, args.name, args.source, args.labels, args.overwrite)
        jobs = plan_conversion(args.source, folder)
    except ValueError as e:
        parser.exit(2, f"stunet-totalseg: error: {one_line(str(e))}\n")
    write_marker(folder, args.source, args.labels)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    todo = [(s, i, l, labels) for s, i, l in jobs if args.overwrite or not (i.is_file() and l.is_file())]
    print(f"stunet-totalseg: {len(jobs)} subjects in {printable(args.source)}, {len(jobs) - len(todo)} already "
          f"converted; writing {printable(folder)} ({args.labels})", file=sys.stderr)
    missing, failed = {}, []
    try:
        for name, absent, error in tqdm(convert_all(todo, args.num_processes), total=len(todo), unit="subject"):
            if error:
                failed.append(error)
                tqdm.write(f"stunet-totalseg: error: {one_line(error)}", file=sys.stderr)
            elif absent:
                missing[name] = absent
                tqdm.write(f"stunet-totalseg: warning: {printable(name)}: {len(absent)} structure(s) without a mask "
                           f"became background ({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''})",
                           file=sys.stderr)
    finally:
        _remove_dead_workers_files(folder)
    write_dataset_files(args.source, folder, labels, args.labels, jobs)
    if missing:
        (folder / "missing_structures.json").write_text(json.dumps(missing, indent=2))
    print(f"stunet-totalseg: {len(todo) - len(failed)} converted, {len(failed)} failed; {len(missing)} subject(s) "
          f"with missing structures" + (f" (see {printable(folder / 'missing_structures.json')})" if missing else ""),
          file=sys.stderr)
    if failed:
        sys.exit(1)
