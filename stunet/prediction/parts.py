"""Which part of a cohort a ``stunet-predict`` process takes, and which GPU, from the launcher that started it.

Cases are split by position in the sorted case list: part ``i`` of ``n`` takes cases ``i, i+n, i+2n, ...``. The part
comes from, in this order:

1. ``--num-parts N [--part-id I]`` (the part is 0 when only ``--num-parts`` is given);
2. the environment of the launcher, split in two levels whose parts multiply:

   - jobs: a SLURM job array (``SLURM_ARRAY_TASK_ID`` among ``SLURM_ARRAY_TASK_COUNT`` tasks; the array's indices
     must be one range with one step, ``--array=0-99`` or ``1-199:2``: the part is the index's position in it);
   - processes within a job: ``torchrun`` (``RANK`` of ``WORLD_SIZE``; already global over all its nodes), else
     SLURM tasks of an ``srun`` step (``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``; the batch script itself, where
     ``SLURM_PROCID`` is 0 of ``SLURM_NTASKS``, is no step and is not split);

3. none: one process predicts every case.

The GPU of a process that several share a machine with is ``cuda:<local rank>`` (torchrun's ``LOCAL_RANK``, SLURM's
``SLURM_LOCALID``), modulo the GPUs it sees (``srun --gpus-per-task=1`` leaves each task one GPU: ``cuda:0``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Part:
    index: int
    count: int
    source: str  # "--num-parts", "torchrun", "SLURM array", "SLURM tasks", or "SLURM array + torchrun" ...

    def describe(self) -> str:
        return f"part {self.index + 1}/{self.count} (from {self.source})"

    def select(self, items: Sequence) -> list:
        return list(items[self.index::self.count])


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"{name}={environ[name]!r} is not a whole number") from None


def _array(environ: Mapping[str, str]) -> tuple[int, int] | None:
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    task = _int(environ, "SLURM_ARRAY_TASK_ID")
    if "SLURM_ARRAY_TASK_COUNT" not in environ:
        raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: give --num-parts and "
                         "--part-id")
    count = _int(environ, "SLURM_ARRAY_TASK_COUNT")
    low = _int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    step = _int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
    high = _int(environ, "SLURM_ARRAY_TASK_MAX") if "SLURM_ARRAY_TASK_MAX" in environ else low + (count - 1) * step
    index, off_step = divmod(task - low, max(step, 1))
    if count < 1 or off_step or not 0 <= index < count or high != low + (count - 1) * step:
        raise ValueError(f"the SLURM array (task {task}, {count} tasks from {low} to {high}, step {step}) is not one "
                         f"range with one step (--array=0-99 or 1-199:2): give --num-parts and --part-id")
    return index, count


def _processes(environ: Mapping[str, str]) -> tuple[int, int, str] | None:
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _int(environ, "RANK"), _int(environ, "WORLD_SIZE"), "torchrun"
    if "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        return _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_STEP_NUM_TASKS"), "SLURM tasks"
    return None


def choose_part(num_parts: int | None, part_id: int | None, environ: Mapping[str, str] = os.environ) -> Part | None:
    """This process's part (None: all cases, no split asked for). Raises ValueError on contradictory settings."""
    if num_parts is not None:
        part_id = 0 if part_id is None else part_id
        if num_parts < 1 or not 0 <= part_id < num_parts:
            raise ValueError(f"--part-id must be in 0..{num_parts - 1}" if num_parts >= 1 else
                             "--num-parts must be at least 1")
        return Part(part_id, num_parts, "--num-parts")
    if part_id is not None:
        raise ValueError("--part-id needs --num-parts")
    array, processes = _array(environ), _processes(environ)
    if processes is not None and not 0 <= processes[0] < processes[1]:
        raise ValueError(f"{processes[2]}: process {processes[0]} of {processes[1]} is out of range")
    if array and processes:
        return Part(array[0] * processes[1] + processes[0], array[1] * processes[1], f"SLURM array + {processes[2]}")
    if array:
        return Part(array[0], array[1], "SLURM array")
    if processes:
        return Part(processes[0], processes[1], processes[2])
    return None


def local_rank(environ: Mapping[str, str] = os.environ) -> int | None:
    """This process's index among the launcher's processes on its machine, if a launcher says so."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if name in environ:
            return _int(environ, name)
    return None


def local_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """``cuda`` (asked for or chosen by ``auto``) becomes ``cuda:<local rank modulo the visible GPUs>`` under a
    launcher; any other device, an explicit ``cuda:N`` included, stays as given."""
    rank = local_rank(environ)
    if device != "cuda" or rank is None:
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{rank % count}" if count else device
