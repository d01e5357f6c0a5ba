"""Where nnU-Net finds the STU-Net trainers, and the environment our own commands give nnU-Net's."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

VARIABLE = "nnUNet_extTrainer"


def trainer_folder() -> Path:
    """The installed folder of ``stunet.nnunet_plugins`` (the repository's ``nnunet_plugins/`` in editable installs)."""
    return Path(importlib.util.find_spec("stunet.nnunet_plugins").submodule_search_locations[0])


def is_configured(environ=os.environ) -> bool:
    return str(trainer_folder()) in environ.get(VARIABLE, "").split(os.pathsep)


def with_trainer_folder(environ: dict) -> dict:
    """A copy of ``environ`` whose nnUNet_extTrainer includes the trainer folder."""
    env = dict(environ)
    if not is_configured(env):
        env[VARIABLE] = os.pathsep.join(p for p in (env.get(VARIABLE), str(trainer_folder())) if p)
    return env


def export_line() -> str:
    return f"export {VARIABLE}={with_trainer_folder(dict(os.environ))[VARIABLE]}"
