"""Every ``STUNET_*`` environment variable, read here and nowhere else, each when it is needed (never cached, so a
test or a launcher may change it between calls). Library code reads settings; it never writes ``os.environ``. The
table below is the users' documentation too: docs/settings.md holds a copy (keep the two alike).

| variable | read by | meaning |
|---|---|---|
| ``STUNET_DEBUG`` | every command | yes: a failure prints its traceback (as ``--debug``) |
| ``STUNET_MAX_VOXELS`` | prediction (command and Python) | the voxel budget at the model's spacing (e.g. ``4e8``); set, it replaces the memory check |
| ``STUNET_HOME`` | weights | the download cache (default: the Hugging Face Hub cache) |
| ``STUNET_DOWNLOAD_TIMEOUT`` | weights | seconds one released-weights file may take to download, first request to last byte (default 21600, 6 hours); past it the transfer stops and its partial file is removed |
| ``STUNET_PRETRAINED_CONFIGS`` | weights | extra released-model configs: JSON files or folders, separated by ``os.pathsep`` |
| ``STUNET_PRECISION`` | trainers | ``fp16`` or ``bf16`` mixed precision on CUDA (default fp16) |
| ``STUNET_ACTIVATION_CHECKPOINTING`` | trainers | ``stage`` / ``block`` (yes means ``stage``, no switches it off) |
| ``STUNET_LABEL_MAP`` | trainers | a label map for label-aware fine-tuning (a shipped name or a JSON file) |
| ``STUNET_TRUST_CHECKPOINT`` | trainers | yes: unpickle ``-pretrained_weights`` with full trust |
| ``STUNET_SHARED`` | tests | the reference material (default ``../shared`` beside the checkout) |

Yes/no values: ``1 true yes on t y`` and ``0 false no off f n`` (any case); empty or unset is the default; anything
else is an error naming the variable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

DEBUG = "STUNET_DEBUG"
MAX_VOXELS = "STUNET_MAX_VOXELS"
HOME = "STUNET_HOME"
DOWNLOAD_TIMEOUT = "STUNET_DOWNLOAD_TIMEOUT"
PRETRAINED_CONFIGS = "STUNET_PRETRAINED_CONFIGS"
PRECISION = "STUNET_PRECISION"
ACTIVATION_CHECKPOINTING = "STUNET_ACTIVATION_CHECKPOINTING"
LABEL_MAP = "STUNET_LABEL_MAP"
TRUST_CHECKPOINT = "STUNET_TRUST_CHECKPOINT"
SHARED = "STUNET_SHARED"
ALL = (DEBUG, MAX_VOXELS, HOME, DOWNLOAD_TIMEOUT, PRETRAINED_CONFIGS, PRECISION, ACTIVATION_CHECKPOINTING, LABEL_MAP,
       TRUST_CHECKPOINT, SHARED)

YES = ("1", "true", "yes", "on", "t", "y")
NO = ("0", "false", "no", "off", "f", "n")


def text(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped; None when unset or empty."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None


def yes_no(value: str | None, name: str, default: bool = False) -> bool:
    """One parser for every yes/no setting."""
    if value is None or not value.strip():
        return default
    lowered = value.strip().lower()
    if lowered in YES:
        return True
    if lowered in NO:
        return False
    raise ValueError(f"{name}={value!r} is neither yes nor no (use 1/0, true/false, yes/no or on/off)")


def flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    return yes_no(text(name, environ), name, default)


def debug(environ: Mapping[str, str] | None = None) -> bool:
    try:
        return flag(DEBUG, environ=environ)
    except ValueError:
        return True  # a typo in a debugging switch still asks for details


def max_voxels(environ: Mapping[str, str] | None = None) -> int | None:
    """The voxel budget the environment sets, or None."""
    value = text(MAX_VOXELS, environ)
    if value is None:
        return None
    try:
        number = int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_VOXELS}={value!r} is not a number of voxels (e.g. 4e8)") from None
    if number < 1:
        raise ValueError(f"{MAX_VOXELS}={value!r}: the voxel budget must be positive")
    return number


def home(environ: Mapping[str, str] | None = None) -> Path | None:
    value = text(HOME, environ)
    return Path(value).expanduser().resolve() if value else None


DEFAULT_DOWNLOAD_TIMEOUT = 6 * 3600.0  # the largest release (5.8 GB) at 270 kB/s


def download_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds one download of released weights may take in all (:data:`DEFAULT_DOWNLOAD_TIMEOUT` unless set)."""
    value = text(DOWNLOAD_TIMEOUT, environ)
    if value is None:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{DOWNLOAD_TIMEOUT}={value!r} is not a number of seconds (e.g. 3600)") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{DOWNLOAD_TIMEOUT}={value!r}: the download deadline must be a positive number of seconds")
    return seconds


def pretrained_configs(environ: Mapping[str, str] | None = None) -> str:
    return text(PRETRAINED_CONFIGS, environ) or ""


def precision(environ: Mapping[str, str] | None = None) -> str | None:
    value = text(PRECISION, environ)
    if value is not None and value.lower() not in ("fp16", "bf16"):
        raise ValueError(f"{PRECISION} must be fp16 or bf16, got {value!r}")
    return None if value is None else value.lower()


def activation_checkpointing(environ: Mapping[str, str] | None = None) -> bool | str | None:
    """``"stage"``, ``"block"``, False (switched off) or None (not set)."""
    value = text(ACTIVATION_CHECKPOINTING, environ)
    if value is None:
        return None
    if value.lower() in ("stage", "block"):
        return value.lower()
    try:
        return "stage" if yes_no(value, ACTIVATION_CHECKPOINTING) else False
    except ValueError:
        raise ValueError(f"{ACTIVATION_CHECKPOINTING} must be stage or block (or 0 to switch it off), got "
                         f"{value!r}") from None


def label_map(environ: Mapping[str, str] | None = None) -> str | None:
    return text(LABEL_MAP, environ)


def trust_checkpoint(environ: Mapping[str, str] | None = None) -> bool:
    return flag(TRUST_CHECKPOINT, environ=environ)


def shared(environ: Mapping[str, str] | None = None) -> str | None:
    return text(SHARED, environ)
