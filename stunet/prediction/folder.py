"""Segment every case of a folder into an output folder: :func:`predict_folder`, what ``stunet-predict`` and
:meth:`stunet.Segmenter.predict_folder` run.

    seg = stunet.Segmenter.from_path("stunet_base.totalseg104")
    run = seg.predict_folder("cts/", "segs/", statistics=True)     # or predict_folder(seg, "cts/", "segs/", ...)
    run.predicted, run.skipped, run.failed, run.timings

A run checks its input and output before anything is predicted (:func:`check_folder`), finds the cases (nnU-Net's
naming, plain files, or DICOM series, folders of them and zips), takes its part of them (:mod:`.parts`), refuses an
output folder whose ``labels.json`` lists other labels, and then, case by case: skips a case whose output exists
(unless ``overwrite``), claims it (:mod:`.claims`, so that processes sharing the folder never predict a case twice),
predicts it with :meth:`Segmenter.predict` and writes its outputs (:func:`.outputs.write_case`). A case that fails is
recorded with its one-line error and the run goes on. Each case's record is merged into ``provenance.json`` as soon
as it is known (:func:`.outputs.record_cases`); ``statistics.csv`` covers every case of the input with statistics
in the folder.

What a run says while it runs goes through a :class:`Reporter`: :class:`TqdmReporter` (progress bars and one line per
case, the command's) or the silent base class.
"""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from stunet.atomic import atomic_write, partial_folder, remove_partial_folder
from stunet.errors import CaseError, one_line, printable
from stunet.prediction.claims import Claims
from stunet.prediction.discovery import ENDINGS, Case, check_output_folder, find_cases, has_image_ending, is_dicom_file
from stunet.prediction.outputs import record_cases, rtstruct_algorithm, statistics_csv, write_case
from stunet.prediction.parts import Part, choose_part

OUTPUT_TYPES = ("nifti", "dicom_seg", "dicom_rtstruct", "masks")  # and "both": nifti and dicom_seg
DICOM_OUTPUTS = frozenset({"dicom_seg", "dicom_rtstruct"})  # they reference the source series


class ArgumentConflict(ValueError):
    """Settings of a folder run that do not go together (the command's usage errors)."""


def output_types(output_type: str) -> frozenset[str]:
    """The outputs an ``output_type`` names: one or more of :data:`OUTPUT_TYPES`, comma-separated (``"both"`` is
    ``"nifti,dicom_seg"``); raises :class:`ArgumentConflict` for any other."""
    wanted = set()
    for item in str(output_type).split(","):
        item = item.strip()
        if item not in (*OUTPUT_TYPES, "both"):
            raise ArgumentConflict(f"output type {item!r} is none of {', '.join(OUTPUT_TYPES)} (comma-separated, or "
                                   f"both = nifti,dicom_seg)")
        wanted |= {"nifti", "dicom_seg"} if item == "both" else {item}
    return frozenset(wanted)


@dataclass
class FolderInput:
    """The checked input and output of a run (:func:`check_folder`)."""

    source: Path
    output: Path
    out_dir: Path
    file_output: bool  # one input file, and ``output`` names the output file
    dicom_cases: list[Case]


@dataclass
class FolderRun:
    """What a run did: its cases (this part's, of ``total`` found) and what became of each."""

    out_dir: Path
    total: int = 0
    part: Part | None = None
    cases: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the output existed
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error
    busy: list[str] = field(default_factory=list)  # left to other processes predicting them
    notes: dict[str, list[str]] = field(default_factory=dict)  # name -> notes of the prediction
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> seconds per phase, writing included

    def summary(self) -> str:
        return (f"{len(self.predicted)} predicted, {len(self.skipped)} skipped (output exists; --overwrite to redo), "
                f"{len(self.failed)} failed"
                + (f", {len(self.busy)} left to other processes predicting them" if self.busy else "")
                + f"; outputs in {self.out_dir}")


class Reporter:
    """What a run says while it runs; this one says nothing (``progress=False``)."""

    def begin(self, header: str, cases: list[Case]) -> Iterable[Case]:
        """The run starts (``header``: its cases, model, device and part); returns the cases to iterate."""
        return cases

    @contextlib.contextmanager
    def case(self, name: str) -> Iterator[tuple[Callable[[int], None] | None, Callable[[int], None] | None]]:
        """Around the prediction of one case: yields (``on_start(tiles)``, ``progress(tiles_done)``) or Nones."""
        yield None, None

    def warning(self, message: str) -> None:
        """A note of a predicted case (repaired voxels, work moved to the CPU)."""

    def error(self, message: str) -> None:
        """A case failed (``message``: one line naming the file and the fix); the run goes on."""

    def predicted(self, name: str, phases: dict[str, float], tiles: int) -> None:
        """A case was predicted and written; ``phases``: seconds per phase."""


class TqdmReporter(Reporter):
    """Progress bars of the cases and of each case's tiles on a terminal, and one line per event, as ``prog: ...`` on
    stderr; written to a file or a pipe (a log), only the lines: no bar, no escape codes."""

    def __init__(self, prog: str = "stunet", file=None):
        self.prog, self.file = prog, file
        self.bar = None

    def _out(self):
        return self.file or sys.stderr

    def begin(self, header: str, cases: list[Case]) -> Iterable[Case]:
        from tqdm import tqdm
        print(f"{self.prog}: {header}", file=self._out())
        self.bar = tqdm(cases, unit="case", desc="cases", file=self.file, disable=None)  # None: off unless a tty
        return self.bar

    @contextlib.contextmanager
    def case(self, name: str):
        from tqdm import tqdm
        if self.bar is not None:
            self.bar.set_postfix_str(printable(name))
        tiles = tqdm(unit="tile", leave=False, desc=printable(name), file=self.file, disable=None)
        try:
            yield (lambda n: tiles.reset(n)), tiles.update
        finally:
            tiles.close()

    def _write(self, line: str) -> None:
        from tqdm import tqdm
        tqdm.write(line, file=self._out())

    def warning(self, message: str) -> None:
        self._write(f"{self.prog}: warning: {one_line(message)}")

    def error(self, message: str) -> None:
        self._write(f"{self.prog}: error: {message}")

    def predicted(self, name: str, phases: dict[str, float], tiles: int) -> None:
        self._write(f"{printable(name)}: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                    + f" ({tiles} tiles)")


# -- before the model --------------------------------------------------------------------------------------------
def _dicom_cases(source: Path) -> list[Case]:
    """DICOM cases (name, [series folder or zip]) when ``source`` is a .zip, or a folder without image files holding a
    series or series folders/zips; else []."""
    from stunet.clinical.dicom import find_dicom_cases
    if source.is_file():
        if is_dicom_file(source) and not has_image_ending(source):  # one (multi-frame) file: a case of its own
            return [Case(source.name.rsplit(".", 1)[0] if source.suffix.lower() == ".dcm" else source.name, [source],
                         ".nii.gz")]
        found = find_dicom_cases(source) if source.suffix.lower() == ".zip" else []
    elif any(p.is_file() and has_image_ending(p) for p in source.iterdir()):
        found = []
    else:
        found = find_dicom_cases(source)
    cases = [Case(name, [path], ".nii.gz") for name, path in found]
    for case in cases:
        same = [c.files[0].name for c in cases if c.name == case.name]
        if len(same) > 1:
            case.problem = (f"{case.files[0]}: {', '.join(same)} would all write the output {case.name} (same case "
                            f"name); rename all but one, nothing of {case.name} is predicted")
    return cases


def check_folder(source: str | Path, output: str | Path, output_type: str = "nifti",
                 series_uid: str | None = None) -> FolderInput:
    """Check a run's input and output before a model is loaded. Raises :class:`ArgumentConflict` for settings that do
    not go together, :class:`~stunet.errors.CaseError` for an output that cannot be written and ImportError when
    a DICOM-SEG output lacks its package."""
    source, output = Path(source), Path(output)
    outputs = output_types(output_type)
    if not source.exists():
        raise ArgumentConflict(f"{source} does not exist")
    single_file = source.is_file()
    file_output = single_file and has_image_ending(output)  # the output is named as a file
    out_dir = output.parent if file_output else output
    if out_dir.resolve() == (source.parent if single_file else source).resolve():
        raise ArgumentConflict(f"the output folder {out_dir} is the input folder; write the segmentations elsewhere")
    dicom_cases = _dicom_cases(source)
    if outputs & DICOM_OUTPUTS and not dicom_cases:
        raise ArgumentConflict(f"--output-type {output_type} needs DICOM input (a series folder, a folder of series "
                               f"folders or a .zip); {source} holds none")
    if series_uid and not dicom_cases:
        raise ArgumentConflict(f"--series-uid goes with DICOM input; {source} holds no DICOM series")
    if "dicom_seg" in outputs:
        from stunet.clinical.dicom_seg import require
        require()
    if file_output and output.is_dir():
        raise CaseError(f"{output}: the output file is an existing folder")
    check_output_folder(out_dir)
    return FolderInput(source, output, out_dir, file_output, dicom_cases)


# -- the run -------------------------------------------------------------------------------------------------------
def _labels_summary(labels: dict) -> str:
    items = [f"{k}: {v}" for k, v in labels.items() if str(k) != "0"]
    return ", ".join(items[:4]) + (f", ... ({len(items)} labels)" if len(items) > 4 else "")


def _check_labels_file(path: Path, labels: dict, overwrite: bool) -> None:
    """Refuse to add outputs to a folder whose labels.json says they use other labels (other --labels/--label-map or
    another model), unless ``overwrite``, which predicts every case again."""
    if overwrite or not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError):
        previous = None
    if previous != labels:
        summary = _labels_summary(previous) if isinstance(previous, dict) else "unreadable"
        raise CaseError(f"{path} lists other labels ({summary}) than this run ({_labels_summary(labels)}); the "
                        f"segmentations there use another label system: write to another folder, or pass --overwrite "
                        f"to predict every case again")


def _finished(targets: Iterable[Path], overwrite: bool, started: float) -> bool:
    """Whether a case whose outputs are complete once ``targets`` exist needs no prediction: they all exist and, with
    ``overwrite``, were written since the run began (by another process sharing the folder)."""
    try:
        written = min(target.stat().st_mtime for target in targets)
    except FileNotFoundError:
        return False
    return not overwrite or written >= started


def run_folder(segmenter, folder: FolderInput, *, overwrite: bool = False, statistics: bool = False,
               preview: bool = False, qc: bool = False, probabilities: bool = False, output_type: str = "nifti",
               series_uid: str | None = None, part: Part | None = None, reporter: Reporter | None = None,
               options: dict | None = None) -> FolderRun:
    """Predict the cases of a checked ``folder`` (:func:`check_folder`) that ``part`` selects (None: all); the
    settings as :func:`predict_folder`'s. Raises :class:`~stunet.errors.CaseError` when there are no images or the
    folder's labels.json lists other labels; a case that fails is recorded in the result and the run goes on."""
    started = time.time()
    reporter = reporter or Reporter()
    statistics = statistics or qc
    model = segmenter.model
    cases = folder.dicom_cases or find_cases(folder.source, model.num_input_channels)
    if not cases:
        raise CaseError(f"no images in {folder.source} (expected {', '.join(ENDINGS)} files, or DICOM series)")
    all_names = [c.name for c in cases]
    run = FolderRun(folder.out_dir, total=len(cases), part=part)
    cases = part.select(cases) if part is not None else cases
    run.cases = [c.name for c in cases]
    if not cases:
        return run
    out_dir = folder.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_folder(out_dir)
    names = segmenter.label_names
    labels = {str(i): n for i, n in sorted(names.items())}
    _check_labels_file(out_dir / "labels.json", labels, overwrite)
    atomic_write(out_dir / "labels.json", lambda tmp: tmp.write_text(json.dumps(labels, indent=2)))
    settings = {"input": folder.source, "output": folder.output, "overwrite": overwrite, "statistics": statistics,
                "preview": preview, "qc": qc, "save_probabilities": probabilities, "output_type": output_type,
                "series_uid": series_uid, "part": part.describe() if part is not None else None}
    header = segmenter.provenance({**settings, **(options or {}), "device": segmenter.options["device"]})
    inputs = {p.resolve() for c in cases for p in c.files}
    writer = model.plans_manager.image_reader_writer_class()
    wanted = output_types(output_type)
    nifti, seg_out, rtstruct_out, masks = (kind in wanted for kind in OUTPUT_TYPES)
    algorithm = rtstruct_algorithm(header) if rtstruct_out else None
    claims = Claims(partial.parent)  # one process per output at a time (claims.py)

    def fail(name: str, error) -> None:
        message = one_line(error)
        run.failed[name] = message
        record_cases(out_dir, header, {name: {"status": "failed", "error": message}})
        reporter.error(message)

    description = (f"{len(cases)} case(s) from {printable(folder.source)}" + (" (DICOM)" if folder.dicom_cases else "")
                   + f", model {model.description}, device {segmenter.options['device']}"
                   + (f", {part.describe()}" if part is not None else ""))
    try:
        for case in reporter.begin(description, cases):
            seg_target, rtstruct_target = out_dir / f"{case.name}.seg.dcm", out_dir / f"{case.name}.rtstruct.dcm"
            masks_target = out_dir / case.name if masks else None
            # the output written last: its existence means the case is complete
            target = (folder.output if folder.file_output else out_dir / f"{case.name}{case.ending}") if nifti \
                else masks_target if masks else rtstruct_target if rtstruct_out else seg_target
            if target.resolve() in inputs:
                fail(case.name, f"{case.files[0]}: the output {target} would overwrite an input; write to another "
                                f"folder")
                continue
            ends = {target, masks_target} - {None}  # the outputs that exist only once the case is complete
            if _finished(ends, overwrite, started):
                run.skipped.append(case.name)
                continue
            try:
                claimed = claims.claim(target.name)
            except CaseError as e:  # a folder or a link where the claim belongs: this case fails, the run goes on
                fail(case.name, e)
                continue
            if not claimed or _finished(ends, overwrite, started):  # another process predicts it, or did
                (run.busy if not claimed else run.skipped).append(case.name)
                continue
            case_start = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory(prefix="stunet-case-") as workdir:  # a zip's series, for the SEG
                    with reporter.case(case.name) as (on_start, progress):
                        result = segmenter.predict(case, probabilities=probabilities,
                                                   keep_image=statistics or preview, qc=qc, series_uid=series_uid,
                                                   for_seg=seg_out, for_rtstruct=rtstruct_out,
                                                   workdir=Path(workdir), progress=progress,
                                                   on_start=on_start, warn=False)
                    for note in result.notes:
                        reporter.warning(note)
                    if not claims.holds():  # taken over as stale by another process, which writes this case
                        run.busy.append(case.name)
                        continue
                    write_case(result, segmenter, writer, target, names, partial, statistics=statistics,
                               preview=preview, nifti=nifti, seg_target=seg_target if seg_out else None,
                               rtstruct_target=rtstruct_target if rtstruct_out else None, algorithm=algorithm,
                               masks_target=masks_target)
            except CaseError as e:
                fail(case.name, e)
                continue
            except Exception as e:  # unforeseen (a reader's or a library's own error): this case fails, the run goes on
                fail(case.name, f"{case.files[0]}: {type(e).__name__}: {e}")
                continue
            predicted = sum(result.timings.values())
            phases = {**result.timings, "writing": time.perf_counter() - case_start - predicted}
            run.predicted.append(case.name)
            run.notes[case.name], run.timings[case.name] = list(result.notes), phases
            record_cases(out_dir, header, {case.name: {"status": "predicted", "notes": result.notes,
                                                       "tiles": result.tiles, "skipped_tiles": result.skipped_tiles}})
            reporter.predicted(case.name, phases, result.tiles)
        if statistics:
            table = statistics_csv(out_dir, all_names)
            if table is not None:
                atomic_write(out_dir / "statistics.csv", lambda tmp: tmp.write_text(table))
        record_cases(out_dir, header, {})
    finally:  # interrupted or not, the claim goes
        claims.close()
    remove_partial_folder(out_dir)
    return run


def predict_folder(segmenter, input: str | Path, output: str | Path, *, overwrite: bool = False,
                   statistics: bool = False, preview: bool = False, qc: bool = False, probabilities: bool = False,
                   output_type: str = "nifti", series_uid: str | None = None,
                   part: Part | tuple[int, int] | None = None, progress: bool = True,
                   reporter: Reporter | None = None) -> FolderRun:
    """Segment the cases of ``input`` (a folder, one image file, a DICOM series folder, a folder of series or a zip)
    into the folder ``output`` (or, for one input file, the file ``output``) with a
    :class:`~stunet.prediction.segmenter.Segmenter`, as ``stunet-predict`` does.

    ``overwrite`` predicts cases whose output exists (else they are skipped); ``statistics`` writes
    case.statistics.json and statistics.csv, ``qc`` adds the quality fields (and implies ``statistics``),
    ``preview`` case.png, ``probabilities`` case.npz; ``output_type`` is ``"nifti"``, ``"dicom_seg"``,
    ``"dicom_rtstruct"``, ``"masks"`` (a folder ``output/case/`` of one 0/1 mask per label, :mod:`.masks`) or several
    of them comma-separated (``"both"``: ``"nifti,dicom_seg"``; the DICOM ones need DICOM input), ``series_uid`` picks the series of a DICOM folder holding several. ``part``: a
    :class:`~stunet.prediction.parts.Part` or ``(index, count)`` to predict cases ``index, index+count, ...``; None
    takes the part torchrun or SLURM gives this process, if any (``(0, 1)`` predicts all). ``progress`` shows
    progress bars and a line per case on stderr (``reporter`` replaces them). Raises what :func:`check_folder` and
    :func:`run_folder` raise; a case that fails is in the result's ``failed``."""
    if isinstance(part, tuple):
        index, count = part
        choose_part(count, index)  # a part that does not exist raises ValueError
        part = Part(index, count, "part=")
    elif part is None:
        part = choose_part(None, None)
    folder = check_folder(input, output, output_type, series_uid)
    if reporter is None:
        reporter = TqdmReporter() if progress else Reporter()
    return run_folder(segmenter, folder, overwrite=overwrite, statistics=statistics, preview=preview, qc=qc,
                      probabilities=probabilities, output_type=output_type, series_uid=series_uid, part=part,
                      reporter=reporter)

