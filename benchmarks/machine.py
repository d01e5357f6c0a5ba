"""One line naming the machine a benchmark ran on: the GPU, or the CPU model with the vector extensions that decide
its float32 and bfloat16 speed."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def describe(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    model = fields.get("model name") or platform.processor() or platform.machine()
    extensions = [e for e in CPU_EXTENSIONS if e in fields.get("flags", "").split()]
    return f"{model} ({os.cpu_count()} cores; {' '.join(extensions) or 'no AVX2'})"
