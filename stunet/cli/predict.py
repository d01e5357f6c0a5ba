"""``stunet-predict``: segment a folder (or one file) of NIfTI images or DICOM series with an STU-Net.

The model is a trained nnU-Net v2 model folder (-m) or a released model (--pretrained NAME: its weights are downloaded
on first use and cached, or read from --checkpoint FILE; no nnU-Net folders or environment variables needed). Every output has its input's exact geometry.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stunet import settings
from stunet.cli.errors import cli_entry, command_parser, printable
from stunet.errors import CaseError, CheckpointError
from stunet.labels import list_label_maps
from stunet.prediction.parts import choose_part
from stunet.weights.pretrained import list_pretrained

EPILOG = """input naming: nnU-Net's, case_0000.nii.gz (+ case_0001.nii.gz ... for multi-channel models), or for
single-channel models plain files (case.nii.gz); or DICOM: a folder holding one series, a folder of series folders,
or a .zip. Outputs: OUT/case with the input's ending (.nii.gz for DICOM; label names in NIfTI headers),
OUT/labels.json (label index -> name),
OUT/provenance.json; with --statistics OUT/case.statistics.json and OUT/statistics.csv, with --preview OUT/case.png,
with --output-type dicom_seg (or both) OUT/case.seg.dcm, with dicom_rtstruct OUT/case.rtstruct.dcm, with masks
OUT/case/NAME.nii.gz (one 0/1 mask per label, as TotalSegmentator writes them).

examples:
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104       # weights downloaded on first use
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104 --checkpoint base_ep4k.model
  stunet-predict -i mri/ -o segs/ --pretrained stunet_base.brats21    # 4 files per case: case_0000 ... case_0003
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104 --checkpoint base_ep4k.model --label-map amos22
  stunet-predict -i imagesTs/ -o out/ -m $nnUNet_results/Dataset004_Liver/STUNetTrainer_base_ft__nnUNetPlans__3d_fullres -f 0 1
  stunet-predict -i dicom_series/ -o segs/ --pretrained stunet_base.totalseg104 --output-type both --statistics
  stunet-predict -i dicom_series/ -o segs/ --pretrained stunet_base.totalseg104 --output-type nifti,dicom_rtstruct
  stunet-predict -i cts/ -o segs/ --pretrained stunet_base.totalseg104 --output-type masks --labels liver,spleen
  stunet-predict -i cts/ -o segs/ -m MODEL --num-parts 4 --part-id 0      # one of four machines
  torchrun --nproc_per_node=4 $(which stunet-predict) -i cts/ -o segs/ -m MODEL   # parts and GPUs from torchrun
  (sbatch --array=0-9) stunet-predict -i cts/ -o segs/ -m MODEL    # part from SLURM; see docs/scaling.md"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("stunet-predict", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
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
                          "beside the weights) and run on the CPU by ONNX Runtime or OpenVINO (the deploy extra, "
                          "docs/deployment.md); an ONNX file given with -m runs on onnxruntime unless openvino is "
                          "asked for")
    run.add_argument("--speed", choices=["exact", "fastest"], default="exact",
                     help="exact (default): the --backend and --precision given (torch fp32 on the CPU); fastest: "
                          "the fastest backend and precision installed here, said in one line and recorded in "
                          "provenance.json (OpenVINO bf16 on CPUs with native bf16, torch bf16 without OpenVINO, fp32 "
                          "otherwise; fp16 on CUDA; a little less agreement, docs/performance.md)")
    run.add_argument("--no-skip", action="store_true",
                     help="run the network on every tile; by default a CT's tiles that hold no body (only air) are "
                          "not run and get the network's answer for an all-air tile (docs/prediction.md)")
    run.add_argument("--step-size", type=float, default=0.5, help="tile step as a fraction of the patch (0.5)")
    run.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    run.add_argument("--fast", action="store_true", help="--disable-tta and --step-size 1: fastest, a little less "
                                                         "accurate")
    run.add_argument("--max-voxels", type=float, metavar="N",
                     help=f"voxel budget of an image at the model's spacing (default 2e8, or ${settings.MAX_VOXELS}); "
                          f"larger images are skipped with a message, and so are images whose estimated memory "
                          f"exceeds what the machine has available, unless a budget is set here or in "
                          f"${settings.MAX_VOXELS}")
    out = p.add_argument_group("outputs")
    out.add_argument("--label-map", help="map the model's classes onto another label system: a shipped map ("
                                         + ", ".join(list_label_maps()) + ") or a JSON file")
    out.add_argument("--labels", help="keep only these labels (comma-separated names or numbers); others become 0")
    out.add_argument("--save-probabilities", action="store_true",
                     help="also write case.npz with float16 probabilities of the output labels")
    out.add_argument("--output-type", default="nifti", metavar="TYPE[,TYPE...]",
                     help="nifti: case.nii.gz (default); dicom_seg: a DICOM-SEG case.seg.dcm; dicom_rtstruct: an RT "
                          "Structure Set case.rtstruct.dcm (the DICOM ones reference the series: DICOM input only); "
                          "masks: a folder case/ of one 0/1 mask per label (liver.nii.gz, ..., empty ones too); "
                          "several comma-separated, both = nifti,dicom_seg")
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


def _segmenter(args, parser):
    """The Segmenter of -m (a model folder or an exported ONNX file) or --pretrained, as Segmenter.from_path loads
    them."""
    from stunet.prediction.segmenter import Segmenter, is_exported
    if bool(args.model_folder) == bool(args.pretrained):
        parser.error("give either -m MODEL_FOLDER or --pretrained NAME [--checkpoint FILE]")
    if args.checkpoint and not args.pretrained:
        parser.error("--checkpoint FILE goes with --pretrained NAME (the released model it is)")
    if args.folds and args.model_folder and is_exported(args.model_folder):
        parser.error("-f goes with a model folder; an ONNX file holds one network")
    return Segmenter.from_path(args.pretrained or args.model_folder, args.folds, checkpoint=args.checkpoint,
                               checkpoint_name=args.checkpoint_name, trust=args.trust_checkpoint, device=args.device,
                               step_size=args.step_size, mirroring=not args.disable_tta, precision=args.precision,
                               labels=args.labels, label_map=args.label_map, backend=args.backend,
                               max_voxels=args.max_voxels, speed=args.speed, skip_air=not args.no_skip)


@cli_entry("stunet-predict")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fast:
        args.disable_tta, args.step_size = True, 1.0
    if args.qc:
        args.statistics = True
    if not 0 < args.step_size <= 1:
        parser.error("--step-size must be in (0, 1]")
    try:
        part = choose_part(args.num_parts, args.part_id)
    except ValueError as e:
        parser.error(str(e))
    from stunet.prediction.folder import ArgumentConflict, TqdmReporter, check_folder, run_folder
    try:  # before the model is loaded: an output that cannot be written fails now, in one line
        folder = check_folder(args.input, args.output, args.output_type, args.series_uid)
    except ArgumentConflict as e:
        parser.error(str(e))
    except (CaseError, ImportError) as e:
        parser.exit(1, f"stunet-predict: error: {e}\n")
    try:
        segmenter = _segmenter(args, parser)
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        parser.exit(1, f"stunet-predict: error: {e}\n")
    args.backend = segmenter.options["backend"]
    if segmenter.speed_choice:
        args.precision = segmenter.options["precision"]
        print(printable(f"stunet-predict: --speed fastest: {segmenter.speed_choice}"), file=sys.stderr)
    try:
        run = run_folder(segmenter, folder, overwrite=args.overwrite, statistics=args.statistics,
                         preview=args.preview, qc=args.qc, probabilities=args.save_probabilities,
                         output_type=args.output_type, series_uid=args.series_uid, part=part,
                         reporter=TqdmReporter("stunet-predict"), options=vars(args))
    except CaseError as e:  # no images, or an output folder of other labels
        parser.exit(1, f"stunet-predict: error: {e}\n")
    if part is not None and not run.cases:
        parser.exit(0, f"stunet-predict: {part.describe()}: no cases in this part ({run.total} in all)\n")
    print(printable(f"stunet-predict: {run.summary()}"), file=sys.stderr)
    if run.failed:
        print("failed:\n  " + "\n  ".join(run.failed.values()), file=sys.stderr)
        sys.exit(1)
