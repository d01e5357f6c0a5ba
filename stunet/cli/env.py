"""``stunet-env``: the shell line that lets nnU-Net's commands find the STU-Net trainers.

Installing stunet sets it at every Python start-up (``stunet-nnunet.pth`` in site-packages); print and ``eval`` this
line where that does not happen, e.g. when nnU-Net runs from another environment or with ``python -S``.
"""
import argparse
import sys

from stunet.cli.errors import cli_entry, command_parser
from stunet.nnunet.env import export_line, is_configured


def build_parser() -> argparse.ArgumentParser:
    return command_parser("stunet-env", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                          epilog='usage in a shell: eval "$(stunet-env)"')


@cli_entry("stunet-env")
def main(argv=None) -> None:
    build_parser().parse_args(argv)
    print(export_line())
    if not is_configured():
        print("# nnUNet_extTrainer was not set by the start-up hook in this interpreter; run the line above "
              "(or add it to your shell profile)", file=sys.stderr)
