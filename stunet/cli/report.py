"""``stunet-report``: one self-contained HTML page for a folder of predictions without references: per-label volumes
across cases and the quality-control flags (from the cases' case.statistics.json, or computed from the label maps
when that file is absent). See docs/evaluation.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stunet.cli.errors import cli_entry, command_parser, interrupt_ends, printable


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("stunet-report", description=__doc__.split(": ", 1)[1])
    parser.add_argument("predictions", type=Path, help="a stunet-predict output folder (label images, labels.json, "
                                                       "case.statistics.json)")
    parser.add_argument("-o", "--output", type=Path, help="the page (default PREDICTIONS/report.html), or a folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


@cli_entry("stunet-report")
def main(argv=None) -> None:
    with interrupt_ends("stunet-report"):
        args = build_parser().parse_args(argv)
        from stunet.evaluation.predictions import report_predictions

        target = report_predictions(args.predictions, args.output, progress=None if args.quiet else (
            lambda message: print(f"stunet-report: {printable(message)}", file=sys.stderr, flush=True)))
    print(f"stunet-report: wrote {printable(target)}")
