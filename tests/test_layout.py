"""The package is the same wherever Python starts (issue 12, point 8).

After a non-editable ``pip install .``, Python started in the checkout's root imports the source tree's ``stunet``
(the current directory comes first on sys.path), which has no ``nnunet_plugins/`` or ``pretrained_configs/`` inside it;
``stunet/__init__.py`` maps those two names onto the checkout's top-level folders. These tests install a wheel of this
checkout into a fresh virtual environment (dependencies borrowed from the running interpreter, nothing downloaded, the
running environment untouched) and import the package from the checkout's root, from elsewhere, and with the checkout
on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
RELEASED = ["stunet_base.brats21", "stunet_base.ct_org", "stunet_base.feta21", "stunet_base.totalseg104",
            "stunet_huge.totalseg104", "stunet_large.totalseg104", "stunet_small.totalseg104"]

# Run by the fresh environment's interpreter; prints what the assertions need as one JSON line.
PROBE = r"""
import importlib, importlib.util, json, os, sys
import stunet
from stunet.weights.pretrained import list_pretrained
import stunet.nnunet_plugins.stunet_trainers as trainers
from stunet.nnunet.env import trainer_folder
ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
# nnU-Net imports the modules of each nnUNet_extTrainer folder as top-level modules, with the folder on sys.path
sys.path.insert(0, ext[0])
top_level = importlib.import_module("stunet_trainers")
sys.path.pop(0)
print(json.dumps({
    "stunet": stunet.__file__,
    "pretrained": list_pretrained(),
    "trainers": trainers.__file__,
    "trainer_folder": str(trainer_folder()),
    "ext": ext,
    "top_level_trainer": hasattr(top_level, "STUNetTrainer_small"),
    "finder": any(hasattr(f, "stunet_checkout") for f in sys.meta_path),
    "leaks": [n for n in ("stunet.setup", "stunet.tests") if importlib.util.find_spec(n) is not None],
}))
"""


def _run(command, **kwargs):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python, site-packages)`` of a fresh virtual environment holding a wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("layout")
    # Build from a copy of what setup.py packages, so no build/ or egg-info lands in the checkout.
    src = tmp / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy2(CHECKOUT / name, src / name)
    for name in ("stunet", "nnunet_plugins", "pretrained_configs"):
        shutil.copytree(CHECKOUT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "--no-cache-dir", "-q", "-w", tmp / "wheels", src])
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel of the checkout offline (pip wheel --no-build-isolation needs setuptools "
                    f"in this environment): {built.stderr.strip()[-500:]}")
    wheel = next((tmp / "wheels").glob("stunet-*.whl"))

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                      "--no-cache-dir", "-q", wheel])
    assert installed.returncode == 0, installed.stderr
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # torch, nnunetv2, ... come from the running interpreter's site-packages through plain path lines, which put the
    # folders on sys.path without running their .pth files (this environment's editable-install finder among them).
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, purelib


def _probe(python, cwd, pythonpath=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("nnUNet_extTrainer", "PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    out = _run([python, "-c", PROBE], cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["checkout root as the current directory", "checkout on PYTHONPATH",
                                   "installed package, started elsewhere"])
def test_same_package_wherever_python_starts(installed, tmp_path, where):
    python, purelib = installed
    if where == "checkout root as the current directory":
        found = _probe(python, cwd=CHECKOUT)
    elif where == "checkout on PYTHONPATH":
        found = _probe(python, cwd=tmp_path, pythonpath=CHECKOUT)
    else:
        found = _probe(python, cwd=tmp_path)

    assert found["pretrained"] == RELEASED
    assert found["top_level_trainer"], "nnU-Net could not import stunet_trainers from nnUNet_extTrainer's folder"
    assert found["leaks"] == [], "the checkout's root must not become part of the stunet package"
    if where == "installed package, started elsewhere":
        package = purelib / "stunet"
        assert Path(found["stunet"]) == package / "__init__.py"
        assert Path(found["trainers"]) == package / "nnunet_plugins" / "stunet_trainers.py"
        assert Path(found["trainer_folder"]) == package / "nnunet_plugins"
        assert found["ext"] == [str(package / "nnunet_plugins")]
        assert not found["finder"], "an installed package must not add the checkout's finder"
    else:
        # The source tree wins, as it does for any package, and brings its own subpackages.
        assert Path(found["stunet"]) == CHECKOUT / "stunet" / "__init__.py"
        assert Path(found["trainers"]) == CHECKOUT / "nnunet_plugins" / "stunet_trainers.py"
        assert Path(found["trainer_folder"]) == CHECKOUT / "nnunet_plugins"
        # The start-up .pth line runs before the current directory joins sys.path (it finds the installed trainers)
        # but after PYTHONPATH does (it finds the checkout's).
        on_path = where == "checkout on PYTHONPATH"
        assert found["ext"] == [str(CHECKOUT / "nnunet_plugins" if on_path else purelib / "stunet" / "nnunet_plugins")]
