"""``stunet-export``: an STU-Net as an ONNX graph (one patch in, the full-resolution head's logits out) with a sidecar
JSON that says how to use it without stunet (patch, spacing, normalisation, labels, source checksum, versions).

MODEL is a released model's name (weights from the cache, or --checkpoint FILE), an nnU-Net v2 model folder (-f FOLD),
or a checkpoint file (fold_N/checkpoint_*.pth of a model folder, or a released model's file). The graph is checked
before it is written: ONNX's checker, and one run against PyTorch on a random patch (refused beyond the tolerance of
docs/deployment.md). Needs the deploy extra (onnx, onnxruntime, openvino; docs/deployment.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser, printable
from stunet.errors import CheckpointError

EPILOG = """examples:
  stunet-export stunet_base.totalseg104 -o base.onnx                           # weights from the cache
  stunet-export stunet_base.totalseg104 --checkpoint base_ep4k.model -o base.onnx --patch 96 96 96
  stunet-export $nnUNet_results/Dataset004_Liver/STUNetTrainer_base_ft__nnUNetPlans__3d_fullres -f 0 -o liver.onnx
  stunet-export fold_0/checkpoint_final.pth -o liver.onnx                      # its model folder's plans
  stunet-predict -i cts/ -o segs/ -m liver.onnx --backend openvino            # the graph and its sidecar

Writes OUT.onnx and OUT.json (the sidecar; see docs/deployment.md)."""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("stunet-export", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a released model's name, an nnU-Net model folder, or a checkpoint file")
    p.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write (OUT.onnx; OUT.json "
                                                                     "beside it)")
    p.add_argument("-f", "--fold", help="the fold of a model folder (needed when it has several)")
    p.add_argument("--checkpoint", type=Path, help="a released model's checkpoint file (instead of the cache)")
    p.add_argument("--checkpoint-name", default="checkpoint_final.pth", help="of a model folder's fold")
    p.add_argument("--patch", type=int, nargs="+", metavar="N", help="the input patch (default: the plans'), e.g. "
                                                                     "--patch 128 128 128")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--check-with", choices=["onnxruntime", "openvino"], default="onnxruntime",
                   help="the engine that runs the graph against PyTorch before it is written")
    p.add_argument("--trust-checkpoint", action="store_true", help="unpickle checkpoints with full trust")
    return p


def load_for_export(args, parser):
    """The Model to export (one network) for MODEL and the options."""
    from stunet.prediction.model import load_model_folder, load_pretrained
    from stunet.weights.loading import read_weights
    from stunet.weights.pretrained import list_pretrained

    source = Path(args.model)
    if args.model in list_pretrained():
        if args.fold is not None:
            parser.error("-f FOLD goes with a model folder")
        return load_pretrained(args.model, args.checkpoint, trust=args.trust_checkpoint)
    if args.checkpoint:
        parser.error("--checkpoint FILE goes with a released model's name (the release it is)")
    if source.is_dir():
        folds = [args.fold] if args.fold is not None else None
        model = load_model_folder(source, folds, args.checkpoint_name, trust=args.trust_checkpoint)
        if len(model.networks) > 1:
            parser.error(f"{source} has {len(model.networks)} folds; export one with -f FOLD")
        return model
    if source.is_file():
        folder = source.parent.parent
        if source.parent.name.startswith("fold_") and (folder / "plans.json").is_file():
            return load_model_folder(folder, [source.parent.name[len("fold_"):]], source.name,
                                     trust=args.trust_checkpoint)
        config = read_weights(source, trust=args.trust_checkpoint).release()
        if config is None:
            raise CheckpointError(f"{source}: neither in an nnU-Net model folder (fold_N/ beside plans.json) nor a "
                                  f"released model's checkpoint; give the model folder with -f FOLD, or the release's "
                                  f"name with --checkpoint FILE")
        return load_pretrained(config.name, source, trust=args.trust_checkpoint)
    raise FileNotFoundError(f"{args.model}: neither a released model's name (stunet-download --list) nor an existing "
                            f"folder or file")


def _description_file(args, model) -> Path | str:
    """The file that describes MODEL's plans: a model folder's plans.json, else the checkpoint (or the release)."""
    source = Path(args.model)
    folder = source if source.is_dir() else source.parent.parent if source.is_file() else None
    if folder is not None and (folder / "plans.json").is_file():
        return folder / "plans.json"
    return model.checkpoints[0] if model.checkpoints else args.model


@cli_entry("stunet-export")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output.suffix != ".onnx":
        parser.error(f"{args.output}: the output is an .onnx file")
    from stunet.deploy.engines import require
    try:
        require("onnx", args.check_with)
    except ImportError as e:
        parser.exit(1, f"stunet-export: error: {e}\n")
    from stunet.deploy.cache import file_sha256
    from stunet.deploy.export import DEFAULT_OPSET, OPSETS, check_memory, check_patch, export_graph
    from stunet.deploy.limits import check_model_fields
    from stunet.deploy.sidecar import build_sidecar, model_fields, write_sidecar

    if args.opset is not None and args.opset not in OPSETS:
        parser.error(f"--opset {args.opset}: ONNX opsets {OPSETS.start} to {OPSETS.stop - 1} are supported (default "
                     f"{DEFAULT_OPSET})")
    model = load_for_export(args, parser)
    network = model.networks[0].cpu()
    patch = check_patch(network, args.patch or list(model.configuration_manager.patch_size))
    config = network.config
    check_model_fields(model_fields(config.in_channels, config.num_classes, patch, model.plans, model.configuration,
                                    model.dataset_json, model.mirror_axes),
                       config.in_channels, config.num_classes, _description_file(args, model),
                       "fix it, or export another model")
    check_memory(network, patch)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    record = export_graph(network, args.output, patch, "logits", opset, check_with=args.check_with)
    checkpoint = Path(model.checkpoints[0]) if model.checkpoints else None
    content = build_sidecar(args.output, record, network, model.plans, model.configuration, model.dataset_json,
                            model.mirror_axes, checkpoint, file_sha256(checkpoint) if checkpoint else None,
                            model.description)
    side = write_sidecar(args.output, content)
    check = record["check"]
    size = args.output.stat().st_size / 2 ** 20
    print(printable(f"stunet-export: wrote {args.output} ({size:.1f} MiB; input {content['graph']['input']['shape']}, "
                    f"logits {content['graph']['output']['shape']}) and {side}; largest difference from PyTorch on a "
                    f"random patch {check['max_abs_difference']:.2g} (allowed {check['tolerance']:.2g}, "
                    f"{check['engine']})"), file=sys.stderr)
