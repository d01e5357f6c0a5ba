"""Every ``stunet-*`` command answers ``--help`` at once: building its parser and printing the help load none of the
heavy libraries (PyTorch, nnU-Net, SimpleITK, matplotlib, SciPy), which the commands import only where they do the work.
The assertion is on what a fresh interpreter has imported, not on a wall time, so it holds on a busy machine too
(the measured times are in README.md)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "nnunetv2", "SimpleITK", "matplotlib", "scipy")


def console_scripts() -> dict[str, str]:
    """Command name -> module of its ``main``, as setup.py installs them."""
    return dict(re.findall(r'"(stunet-[a-z]+)=(stunet\.cli\.[a-z_]+):main"', (ROOT / "setup.py").read_text()))


HELP = """
import contextlib, io, json, sys
from {module} import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "help": out.getvalue(), "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def test_every_console_script_is_known():
    scripts = console_scripts()
    assert len(scripts) >= 12 and "stunet-predict" in scripts, scripts
    assert {f"stunet.cli.{p.stem}" for p in (ROOT / "stunet" / "cli").glob("*.py")} - set(scripts.values()) == \
        {"stunet.cli.__init__", "stunet.cli.errors"}


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_help_loads_no_heavy_library_and_lists_debug(command):
    module = console_scripts()[command]
    done = subprocess.run([sys.executable, "-c", HELP.format(module=module, heavy=HEAVY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert result["help"].startswith(f"usage: {command}"), result["help"][:200]
    assert "--debug" in result["help"]
    assert result["heavy"] == [], f"{command} --help imports {result['heavy']}"
