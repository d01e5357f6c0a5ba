"""``stunet-predict``: segment a folder (or one file) of NIfTI images or DICOM series with an STU-Net.

The model is a trained nnU-Net v2 model folder (-m) or a released model (--pretrained NAME: its weights are downloaded
on first use and cached, or read from --checkpoint FILE; no nnU-Net folders or environment variables needed). Every output has its input's exact geometry.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from stunet.atomic import atomic_write, partial_folder, remove_partial_folder
from stunet.prediction.discovery import ENDINGS, Case, check_output_folder, find_cases, has_image_ending, is_dicom_file
from stunet.prediction.budget import ENV_MAX_VOXELS
from stunet.errors import CaseError
from stunet.errors import CheckpointError
from stunet.prediction.claims import Claims
from stunet.cli.errors import cli_entry, one_line, printable
from stunet.paths import image_ending, is_utf8
from stunet.cpu_memory import reuse_freed_memory
from stunet.labels import list_label_maps
from stunet.prediction.outputs import describe_nifti, write_extras, write_seg_for_series
from stunet.prediction.parts import choose_part, local_device
from stunet.weights.pretrained import list_pretrained

EPILOG = """input naming: nnU-Net's, case_0000.nii.gz (+ case_0001.nii.gz ... for multi-channel models), or for
single-channel models plain files (case.nii.gz); or DICOM: a folder holding one series, a folder of series folders,
or a .zip. Outputs: OUT/case with the input's ending (.nii.gz for DICOM; label names in NIfTI headers),
OUT/labels.json (label index -> name),
OUT/provenance.json; with --statistics OUT/case.statistics.json and OUT/statistics.csv, with --preview OUT/case.png,
with --output-type dicom_seg/both OUT/case.seg.dcm.

examples:
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104       # weights downloaded on first use
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104 --checkpoint base_ep4k.model
  stunet-predict -i mri/ -o segs/ --pretrained stunet_base.brats21    # 4 files per case: case_0000 ... case_0003
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104 --checkpoint base_ep4k.model --label-map amos22
  stunet-predict -i imagesTs/ -o out/ -m $nnUNet_results/Dataset004_Liver/STUNetTrainer_base_ft__nnUNetPlans__3d_fullres -f 0 1
  stunet-predict -i dicom_series/ -o segs/ --pretrained stunet_base.totalseg104 --output-type both --statistics
  stunet-predict -i cts/ -o segs/ -m MODEL --num-parts 4 --part-id 0      # one of four machines
  torchrun --nproc_per_node=4 $(which stunet-predict) -i cts/ -o segs/ -m MODEL   # parts and GPUs from torchrun
  (sbatch --array=0-9) stunet-predict -i cts/ -o segs/ -m MODEL    # part from SLURM; see docs/scaling.md"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stunet-predict", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", type=Path, required=True,
                   help="input folder, one image file, a DICOM series folder, a folder of series folders or a .zip")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (or file, for one input file)")
    model = p.add_argument_group("model (one of)")
    model.add_argument("-m", "--model-folder", type=Path, help="nnU-Net v2 trained model folder (plans.json, fold_*), "
                                                                "or an ONNX file of stunet-export with its sidecar "
                                                                "(OUT.onnx + OUT.json; its logits are blended)")
    model.add_argument("-f", "--folds", nargs="+", help="folds to ensemble (default: all with a checkpoint)")
    model.add_argument("--checkpoint-name", default="checkpoint_final.pth")
    model.add_argument("--pretrained", choices=list_pretrained(),
                       help="a released model; its weights come from the cache (downloaded on first use, see "
                            "stunet-download) unless --checkpoint is given")
    model.add_argument("--checkpoint", type=Path, help="the released model's checkpoint file (.model, .pth, "
                                                       ".safetensors); always used instead of the cache")
    model.add_argument("--trust-checkpoint", action="store_true", help="unpickle checkpoints with full trust")
    run = p.add_argument_group("prediction")
    run.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                     help="network precision; auto = fp16 mixed precision on CUDA, fp32 on the CPU (and with "
                          "--backend onnxruntime/openvino; docs/deployment.md)")
    run.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                     help="what runs the network: torch (default), or the network exported to ONNX (once, cached "
                          "beside the weights) and run on the CPU by ONNX Runtime or OpenVINO (pip install "
                          "\"stunet[deploy]\"); an ONNX file given with -m runs on onnxruntime unless openvino is "
                          "asked for")
    run.add_argument("--step-size", type=float, default=0.5, help="tile step as a fraction of the patch (0.5)")
    run.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    run.add_argument("--fast", action="store_true", help="--disable-tta and --step-size 1: fastest, a little less "
                                                         "accurate")
    run.add_argument("--max-voxels", type=float, metavar="N",
                     help=f"voxel budget of an image at the model's spacing (default 2e8, or ${ENV_MAX_VOXELS}); "
                          f"larger images are skipped with a message, and so are images whose estimated memory "
                          f"exceeds what the machine has available, unless a budget is set here or in "
                          f"${ENV_MAX_VOXELS}")
    out = p.add_argument_group("outputs")
    out.add_argument("--label-map", help="map the model's classes onto another label system: a shipped map ("
                                         + ", ".join(list_label_maps()) + ") or a JSON file")
    out.add_argument("--labels", help="keep only these labels (comma-separated names or numbers); others become 0")
    out.add_argument("--save-probabilities", action="store_true",
                     help="also write case.npz with float16 probabilities of the output labels")
    out.add_argument("--output-type", choices=["nifti", "dicom_seg", "both"], default="nifti",
                     help="case.nii.gz (default), a DICOM-SEG case.seg.dcm referencing the series (DICOM input only), "
                          "or both")
    out.add_argument("--series-uid", metavar="UID", help="the series to segment in a DICOM folder holding several")
    out.add_argument("--statistics", action="store_true",
                     help="per-label volume and intensity statistics: case.statistics.json and statistics.csv")
    out.add_argument("--preview", action="store_true", help="a PNG of three slices with the labels: case.png")
    out.add_argument("--qc", action="store_true",
                     help="quality control per label (confidence, uncertain_fraction, components, "
                          "largest_component_fraction, flag) in the statistics; implies --statistics "
                          "(see docs/evaluation.md)")
    out.add_argument("--overwrite", action="store_true", help="predict cases whose output exists (default: skip)")
    out.add_argument("--num-parts", type=int, help="split the cases into this many parts ... (default: from "
                                                   "torchrun or SLURM, else 1)")
    out.add_argument("--part-id", type=int, help="... and predict this one (0-based; default 0)")
    return p


def _load_model(args, parser):
    from stunet.prediction.model import load_model_folder, load_pretrained
    if bool(args.model_folder) == bool(args.pretrained):
        parser.error("give either -m MODEL_FOLDER or --pretrained NAME [--checkpoint FILE]")
    if args.checkpoint and not args.pretrained:
        parser.error("--checkpoint FILE goes with --pretrained NAME (the released model it is)")
    if args.pretrained:  # the user's file wins; without one, the cache (downloading on first use)
        return load_pretrained(args.pretrained, args.checkpoint, trust=args.trust_checkpoint)
    if args.model_folder.suffix == ".onnx":  # stunet-export's graph: the logits graph (no features graph in it)
        from stunet.deploy.sidecar import read_exported
        from stunet.prediction.model import Model
        if args.folds:
            parser.error("-f goes with a model folder; an ONNX file holds one network")
        return Model(**read_exported(args.model_folder))
    return load_model_folder(args.model_folder, args.folds, args.checkpoint_name, trust=args.trust_checkpoint)


def _finished(target: Path, overwrite: bool, started: float) -> bool:
    """Whether ``target`` needs no prediction: it exists and, with --overwrite, was written since this run began
    (by another process sharing the folder)."""
    try:
        written = target.stat().st_mtime
    except FileNotFoundError:
        return False
    return not overwrite or written >= started


def _labels_summary(labels: dict) -> str:
    items = [f"{k}: {v}" for k, v in labels.items() if str(k) != "0"]
    return ", ".join(items[:4]) + (f", ... ({len(items)} labels)" if len(items) > 4 else "")


def _check_labels_file(path: Path, labels: dict, overwrite: bool) -> None:
    """Refuse to add outputs to a folder whose labels.json says they use other labels (other --labels/--label-map or
    another model), unless --overwrite, which predicts every case again."""
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


def _write_case(result, args, segmenter, out_dir: Path, target: Path, seg_target: Path, names: dict[int, str], writer,
                partial: Path, nifti: bool, seg_out: bool) -> None:
    """Every output of one case, each written atomically; the file that marks the case done (``target``) last."""
    seg, properties = result.labels, result.properties
    if result.image is not None:
        write_extras(out_dir, result.name, seg, result.image, properties["spacing"], names, partial, args.statistics,
                     args.preview, result.quality)
    if result.probabilities is not None:
        atomic_write(out_dir / f"{result.name}.npz", lambda tmp: np.savez_compressed(
            tmp, probabilities=result.probabilities, labels=np.array([names[i] for i in sorted(names)])), partial)
    if seg_out:
        write_seg_for_series(seg_target, segmenter.to_sitk(seg, properties), result.series, names,
                             partial)
    if nifti:
        def write(tmp: Path) -> None:
            # ITK aborts on a name that is not UTF-8: it writes a plain one, renamed afterwards
            plain = tmp if is_utf8(tmp) else tmp.with_name("output" + image_ending(tmp))
            writer.write_seg(seg, str(plain), properties)
            if plain != tmp:
                os.replace(plain, tmp)
            if tmp.name.endswith((".nii.gz", ".nii")):
                describe_nifti(tmp, names)
        atomic_write(target, write, partial)


def _statistics_csv(out_dir: Path, names: list[str]) -> str | None:
    """statistics.csv of every case of the run whose statistics JSON is in ``out_dir`` (predicted now or before, by
    this process or another part)."""
    from stunet.clinical.statistics import csv_rows, csv_text
    rows = []
    for name in names:
        path = out_dir / f"{name}.statistics.json"
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows += csv_rows(name, {k: {f: (float("nan") if v is None else v) for f, v in e.items()}
                                for k, e in stats.items()})
    return csv_text(rows) if rows else None


@cli_entry("stunet-predict")
def main(argv=None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.fast:
        args.disable_tta, args.step_size = True, 1.0
    if args.qc:
        args.statistics = True
    if not 0 < args.step_size <= 1:
        parser.error("--step-size must be in (0, 1]")
    started = time.time()
    try:
        part = choose_part(args.num_parts, args.part_id)
    except ValueError as e:
        parser.error(str(e))
    if not args.input.exists():
        parser.error(f"{args.input} does not exist")
    single_file = args.input.is_file()
    file_output = single_file and has_image_ending(args.output)  # -o names the output file
    out_dir = args.output.parent if file_output else args.output
    if out_dir.resolve() == (args.input.parent if single_file else args.input).resolve():
        parser.error(f"the output folder {out_dir} is the input folder; write the segmentations elsewhere")
    dicom_cases = _dicom_cases(args.input)
    if args.output_type != "nifti" and not dicom_cases:
        parser.error(f"--output-type {args.output_type} needs DICOM input (a series folder, a folder of series "
                     f"folders or a .zip); {args.input} holds none")
    if args.series_uid and not dicom_cases:
        parser.error(f"--series-uid goes with DICOM input; {args.input} holds no DICOM series")
    if args.output_type != "nifti":
        from stunet.clinical.dicom_seg import require
        try:
            require()
        except ImportError as e:
            parser.exit(1, f"stunet-predict: error: {e}\n")
    try:  # before the model is loaded: an output that cannot be written fails now, in one line
        if file_output and args.output.is_dir():
            raise CaseError(f"{args.output}: the output file is an existing folder")
        check_output_folder(out_dir)
    except CaseError as e:
        parser.exit(1, f"stunet-predict: error: {e}\n")
    if args.backend is None:  # an exported ONNX file needs an engine: the reference one unless told otherwise
        onnx_file = args.model_folder is not None and args.model_folder.suffix == ".onnx"
        args.backend = "onnxruntime" if onnx_file else "torch"
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and args.backend == "torch" else "cpu"
    device = local_device(device)  # one GPU per local rank under torchrun or srun
    if torch.device(device).type == "cpu":
        reuse_freed_memory()
    from stunet.prediction.segmenter import Segmenter
    try:
        model = _load_model(args, parser)
        segmenter = Segmenter(model=model, device=device, step_size=args.step_size, mirroring=not args.disable_tta,
                              precision=args.precision, labels=args.labels, label_map=args.label_map,
                              backend=args.backend,
                              max_voxels=args.max_voxels)
        names = segmenter.label_names
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        parser.exit(1, f"stunet-predict: error: {e}\n")

    cases = dicom_cases or find_cases(args.input, model.num_input_channels)
    if not cases:
        parser.exit(1, f"stunet-predict: error: no images in {args.input} (expected {', '.join(ENDINGS)} files, or "
                       f"DICOM series)\n")
    all_names = [c.name for c in cases]
    if part is not None and not part.select(cases):
        parser.exit(0, f"stunet-predict: {part.describe()}: no cases in this part ({len(cases)} in all)\n")
    cases = part.select(cases) if part is not None else cases
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_folder(out_dir)
    labels = {str(i): n for i, n in sorted(names.items())}
    try:
        _check_labels_file(out_dir / "labels.json", labels, args.overwrite)
    except CaseError as e:
        parser.exit(1, f"stunet-predict: error: {e}\n")
    atomic_write(out_dir / "labels.json", lambda tmp: tmp.write_text(json.dumps(labels, indent=2)))
    inputs = {p.resolve() for c in cases for p in c.files}
    writer = model.plans_manager.image_reader_writer_class()
    print(f"stunet-predict: {len(cases)} case(s) from {printable(args.input)}" + (" (DICOM)" if dicom_cases else "")
          + f", model {model.description}, device {device}"
          + (f", {part.describe()}" if part is not None else ""), file=sys.stderr)
    nifti, seg_out = args.output_type in ("nifti", "both"), args.output_type in ("dicom_seg", "both")
    claims, busy = Claims(partial.parent), []  # one process per output at a time (stunet/claims.py)
    done, skipped, failed = 0, 0, []
    record: dict[str, dict] = {}  # this process's cases: predicted (with notes) or failed (with the error)

    def fail(name: str, error) -> None:
        """One line for a case that failed, in the log, the summary and provenance.json; the run goes on."""
        message = one_line(error)
        failed.append(message)
        record[name] = {"status": "failed", "error": message}
        tqdm.write(f"stunet-predict: error: {message}", file=sys.stderr)

    bar = tqdm(cases, unit="case", desc="cases")
    for case in bar:
        seg_target = out_dir / f"{case.name}.seg.dcm"
        # the file written last: its existence means the case is complete
        target = (args.output if file_output else out_dir / f"{case.name}{case.ending}") if nifti else seg_target
        if target.resolve() in inputs:
            fail(case.name, f"{case.files[0]}: the output {target} would overwrite an input; write to another folder")
            continue
        if _finished(target, args.overwrite, started):
            skipped += 1
            continue
        try:
            claimed = claims.claim(target.name)
        except CaseError as e:  # a folder or a link where the claim belongs: this case fails, the run goes on
            fail(case.name, e)
            continue
        if not claimed:  # another process is predicting it
            busy.append(case.name)
            continue
        if _finished(target, args.overwrite, started):  # written by another process since the first look
            skipped += 1
            continue
        bar.set_postfix_str(printable(case.name))
        case_start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="stunet-case-") as workdir:  # a zip's series, for the SEG
                tiles = tqdm(unit="tile", leave=False, desc=printable(case.name))
                try:
                    result = segmenter.predict(case, probabilities=args.save_probabilities,
                                               keep_image=args.statistics or args.preview, qc=args.qc,
                                               series_uid=args.series_uid, for_seg=seg_out,
                                               workdir=Path(workdir), progress=tiles.update,
                                               on_start=lambda n: tiles.reset(n), warn=False)
                finally:
                    tiles.close()
                for note in result.notes:
                    tqdm.write(f"stunet-predict: warning: {one_line(note)}", file=sys.stderr)
                if not claims.holds():  # taken over as stale by another process, which writes this case
                    busy.append(case.name)
                    continue
                _write_case(result, args, segmenter, out_dir, target, seg_target, names, writer, partial, nifti,
                            seg_out)
            predicted = sum(result.timings.values())
            phases = {**result.timings, "writing": time.perf_counter() - case_start - predicted}
            tqdm.write(f"{printable(case.name)}: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                       + f" ({result.tiles} tiles)", file=sys.stderr)
            record[case.name] = {"status": "predicted", "notes": result.notes}
            done += 1
        except CaseError as e:
            fail(case.name, e)
        except Exception as e:  # unforeseen (a reader's or a library's own error): this case fails, the run goes on
            fail(case.name, f"{case.files[0]}: {type(e).__name__}: {e}")
        except BaseException:  # interrupted: its claim goes with it
            claims.close()
            raise
    if args.statistics:
        table = _statistics_csv(out_dir, all_names)
        if table is not None:
            atomic_write(out_dir / "statistics.csv", lambda tmp: tmp.write_text(table))
    options = {k: v for k, v in vars(args).items()}
    options["device"] = str(device)
    run = {**segmenter.provenance(options), "cases": record}
    atomic_write(out_dir / "provenance.json", lambda tmp: tmp.write_text(json.dumps(run, indent=2)))
    summary = f"stunet-predict: {done} predicted, {skipped} skipped (output exists; --overwrite to redo), " \
              f"{len(failed)} failed" + (f", {len(busy)} left to other processes predicting them" if busy else "") \
              + f"; outputs in {out_dir}"
    claims.close()
    remove_partial_folder(out_dir)
    print(printable(summary), file=sys.stderr)
    if failed:
        print("failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        sys.exit(1)
