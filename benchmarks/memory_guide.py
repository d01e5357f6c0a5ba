"""Which STU-Net size trains at which patch and batch on a 12 / 24 / 40 / 80 GB GPU: estimates.

    python benchmarks/memory_guide.py      # seconds; writes results/memory_guide.md

Estimated training memory: stunet.models.complexity.Complexity.gpu_training_bytes (the model stunet-plans sizes patches and
batches with) = batch × stored activations (counted on the meta device) × 0.5 for mixed precision + 12 bytes per
parameter (fp32 weights, gradients, SGD momentum) + 1.5 GiB for the CUDA context, cuDNN workspaces and allocator
slack. Not measurements: check them with benchmarks/gpu_proof.py on a GPU.
"""
from __future__ import annotations

from pathlib import Path

import torch

import stunet
from stunet.models.complexity import measure

GIB = 2 ** 30
GPUS = (12, 24, 40, 80)
PATCHES = ((128, 128, 128), (96, 96, 96), (64, 64, 64))


def estimate(config, patch, batch, checkpointing) -> float:
    return measure(config, patch, activation_checkpointing=checkpointing).gpu_training_bytes(batch) / GIB


def main() -> None:
    lines = [__doc__.split("\n\n")[0].strip(), "", "Estimated GiB at batch 2 (mixed precision):", "",
             "| model | patch | no checkpointing | per stage | per block |", "|---|---|---|---|---|"]
    fits = {}
    for name in stunet.list_models():
        with torch.device("meta"):
            config = stunet.create_model(name).config
        for patch in PATCHES:
            row = [estimate(config, patch, 2, mode) for mode in (False, "stage", "block")]
            lines.append(f"| {name} | {'×'.join(map(str, patch))} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
            for gpu in GPUS:
                for mode, value in zip(("none", "stage", "block"), row):
                    if value <= gpu * 0.95 and (name, gpu) not in fits:
                        fits[(name, gpu)] = f"{patch[0]}³{'' if mode == 'none' else f' ({mode} ckpt)'}"
    lines += ["", "Largest patch (of 128³, 96³, 64³) that trains at batch 2, least checkpointing first:", "",
              "| model | " + " | ".join(f"{g} GB" for g in GPUS) + " |", "|---|" + "---|" * len(GPUS)]
    for name in stunet.list_models():
        lines.append(f"| {name} | " + " | ".join(fits.get((name, g), "does not fit") for g in GPUS) + " |")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "memory_guide.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
