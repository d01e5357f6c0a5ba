"""``stunet-convert IN OUT``: any supported checkpoint to an nnU-Net v2 checkpoint, model folder or safetensors."""
import argparse
import sys
from pathlib import Path

from stunet.errors import CheckpointError
from stunet.cli.errors import cli_entry, command_parser
from stunet.weights.pretrained import list_pretrained

EPILOG = """OUT decides the format:
  *.pth           an nnU-Net v2 checkpoint (checkpoint_final.pth layout; -pretrained_weights takes it)
  *.safetensors   weights with metadata, plus a JSON config beside it (OUT with .json)
  a folder        a complete nnU-Net v2 model folder (plans.json, dataset.json, fold_all/checkpoint_final.pth)
                  for nnUNetv2_predict_from_modelfolder -m OUT -f all, or stunet-predict -m OUT

examples:
  stunet-convert small_ep4k.model stunet_small_totalseg/          # released v1 model -> nnU-Net v2 model folder
  stunet-convert checkpoint_final.pth small.safetensors"""


def _targets(out: Path) -> list[Path] | None:
    """What writing OUT creates, the sidecar included; None for an unsupported ending."""
    if out.suffix == ".pth":
        return [out]
    if out.suffix == ".safetensors":
        return [out, out.with_suffix(".json")]
    if out.suffix == "":
        return [out / "plans.json", out / "dataset.json", out / "fold_all" / "checkpoint_final.pth"]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stunet-convert", description=__doc__.split(": ", 1)[1], epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="nnU-Net v1 .model (its .model.pkl beside it), nnU-Net v2 .pth, "
                                                  "state_dict or .safetensors")
    parser.add_argument("output", type=Path)
    parser.add_argument("--pretrained", choices=list_pretrained(), help="the released model the checkpoint is "
                        "(default: recognised from its architecture and class count)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT (and its sidecar files)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle IN with full trust (only for files from a trusted source)")
    return parser


@cli_entry("stunet-convert")
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.output
    targets = _targets(out)
    if targets is None:
        parser.exit(2, f"stunet-convert: error: {out}: give a .pth or .safetensors file, or a folder (no suffix)\n")
    if out.suffix == "" and out.exists() and not out.is_dir():
        parser.exit(2, f"stunet-convert: error: {out} is an existing file; the model folder needs another name\n")
    if out.suffix and out.is_dir():
        parser.exit(2, f"stunet-convert: error: {out} is an existing folder; give a file name\n")
    sources = {args.input.resolve(), args.input.resolve().with_name(args.input.name + ".pkl")}
    if any(t.resolve() in sources for t in targets):
        parser.exit(2, f"stunet-convert: error: {out} would overwrite its input {args.input}\n")
    existing = [t for t in targets if t.exists()]
    if existing and not args.overwrite:
        parser.exit(2, f"stunet-convert: error: {', '.join(map(str, existing))} exist(s); pass --overwrite to "
                       f"replace {'it' if len(existing) == 1 else 'them'}\n")
    from stunet.nnunet.convert import write_model_folder, write_nnunet_checkpoint, write_safetensors
    from stunet.weights.loading import read_weights

    try:
        weights = read_weights(args.input, trust=args.trust_checkpoint)
        if out.suffix == ".pth":
            write_nnunet_checkpoint(weights, out, args.pretrained)
        elif out.suffix == ".safetensors":
            write_safetensors(weights, out, args.pretrained)
        else:
            write_model_folder(weights, out, args.pretrained)
    except (CheckpointError, ValueError) as e:
        parser.exit(1, f"stunet-convert: error: {e}\n")
    print(f"read {args.input} ({weights.checkpoint.format}, {len(weights.state_dict)} tensors)", file=sys.stderr)
    for path in targets:
        print(f"wrote {path}")
