"""The cost of writing an RT Structure Set (``--output-type dicom_rtstruct``) against the prediction it follows.

    python benchmarks/rtstruct.py              # 104 labels on 512×512×300 (about 2 minutes on 2 cores)
    python benchmarks/rtstruct.py --quick      # 104 labels on 256×256×80, for a smoke run

A synthetic whole-body label map of 104 structures (deformed ellipsoids of 3 to 60 voxels' radius, a quarter of them
hollow shells with another structure inside, thin winding tubes, structures of several components) on a 512×512×300
CT series of 0.8×0.8×1.5 mm, written as DICOM headers with pydicom; the structure set's CPU time (process time:
tracing, patient coordinates and the file) against the CPU time the prediction of such a CT costs at least: STU-Net-S
(105 classes) forward passes of one 128³ tile times the tile count of the series at TotalSegmentator's 1.5 mm with
nnU-Net's tile step 0.5, without mirroring (mirroring multiplies the prediction by 8). Writes
results/rtstruct_cpu.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import describe

RESULTS = Path(__file__).parent / "results"
SPACING = (1.5, 0.8, 0.8)  # slices, rows, columns (mm)
MODEL_SPACING = 1.5
PATCH = 128


def _blob(shape, centre, radii, rng, hollow: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray]:
    """A deformed ellipsoid (a shell when ``hollow`` > 0: its inner fraction removed) in its bounding box."""
    reach = [int(np.ceil(r * 1.3)) + 1 for r in radii]
    box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip(centre, reach, shape))
    grid = np.ogrid[tuple(slice(b.start - c, b.stop - c) for b, c in zip(box, centre))]
    distance = sum((g / r) ** 2 for g, r in zip(grid, radii)) ** 0.5
    wave = sum(0.12 * np.sin(sum(f * g for f, g in zip(rng.normal(0, 0.15, 3), grid)) + rng.uniform(0, 6.3))
               for _ in range(3))
    inside = distance < 1 + wave
    if hollow:
        inside &= distance > hollow + wave
    return box, inside


def _tube(shape, rng, radius: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """A thin tube winding along the slices."""
    z0, z1 = sorted(rng.integers(0, shape[0], 2))
    z1 = max(z1, z0 + 20)
    zs = np.arange(z0, min(z1, shape[0]))
    y = shape[1] / 2 + rng.uniform(-120, 120) + 25 * np.sin(zs / rng.uniform(15, 40))
    x = shape[2] / 2 + rng.uniform(-150, 150) + 25 * np.cos(zs / rng.uniform(15, 40))
    r = int(np.ceil(radius)) + 1
    y, x = np.clip(y, r, shape[1] - r - 1), np.clip(x, r, shape[2] - r - 1)
    box = (slice(zs[0], zs[-1] + 1), slice(int(y.min()) - r, int(y.max()) + r + 1),
           slice(int(x.min()) - r, int(x.max()) + r + 1))
    yy, xx = np.ogrid[box[1], box[2]]
    inside = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2 for cy, cx in zip(y, x)])
    return box, inside


def synthetic_labels(shape=(300, 512, 512), labels: int = 104, seed: int = 0) -> np.ndarray:
    """A label map of ``labels`` structures (see the module's docstring), every label present."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    scale = shape[1] / 512
    shapes = []
    for label in range(1, labels + 1):
        kind = label % 8
        if kind == 7:  # a thin tube
            shapes.append((0, label, _tube(shape, rng, rng.uniform(1.0, 3.0) * max(scale, 0.5))))
            continue
        size = rng.uniform(3, 60) * scale
        radii = (max(2.0, size * rng.uniform(0.6, 1.4) * 0.53 * shape[0] / 300), size * rng.uniform(0.6, 1.4),
                 size * rng.uniform(0.6, 1.4))
        parts = 3 if kind == 5 else 1  # structures of several components
        for _ in range(parts):
            centre = (int(rng.uniform(0.15, 0.85) * shape[0]), int(shape[1] / 2 + rng.uniform(-0.3, 0.3) * shape[1]),
                      int(shape[2] / 2 + rng.uniform(-0.35, 0.35) * shape[2]))
            radii_part = tuple(r / parts ** 0.5 for r in radii)
            hollow = 0.55 if kind in (2, 4) and size > 8 * scale else 0.0
            shapes.append((-np.prod(radii_part), label, _blob(shape, centre, radii_part, rng, hollow)))
            if hollow:  # something inside the shell: the next label's core
                shapes.append((1, label % labels + 1, _blob(shape, centre, tuple(0.3 * r for r in radii_part), rng)))
    for _, label, (box, inside) in sorted(shapes, key=lambda s: s[0]):  # large first, what lies inside last
        seg[box][inside] = label
    for label in range(1, labels + 1):  # every label present: one that was painted over gets a blob of its own
        if not (seg == label).any():
            centre = tuple(int(rng.uniform(0.2, 0.8) * n) for n in shape)
            box, inside = _blob(shape, centre, (3.0, 6 * scale, 6 * scale), rng)
            seg[box][inside] = label
    return seg


def write_headers(folder: Path, shape) -> list[Path]:
    """A series of ``shape`` (slices, rows, columns) as DICOM files without pixel data (the writer reads headers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from dicom_helpers import write_series
    return write_series(folder, np.zeros((shape[0], 2, 2), np.int16), origin=(-205, -205, -300),
                        pixel_spacing=SPACING[1:], slice_step=(0, 0, SPACING[0]),
                        edit=lambda k, ds: (setattr(ds, "Rows", shape[1]), setattr(ds, "Columns", shape[2]),
                                            setattr(ds, "PixelData", b"")))


def tile_count(shape) -> int:
    """Tiles of nnU-Net's sliding window (step 0.5) over ``shape`` resampled to the model's spacing."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    resampled = [max(PATCH, int(round(n * s / MODEL_SPACING))) for n, s in zip(shape, SPACING)]
    steps = compute_steps_for_sliding_window(resampled, (PATCH,) * 3, 0.5)
    return int(np.prod([len(s) for s in steps]))


def forward_cpu_seconds(repeats: int) -> float:
    """The CPU time (all threads) of one STU-Net-S forward pass of a 128³ tile, the least of ``repeats``."""
    from stunet.models.presets import stunet_small
    network = stunet_small(num_classes=105).eval()
    tile = torch.randn(1, 1, PATCH, PATCH, PATCH)
    times = []
    with torch.inference_mode():
        network(tile)  # warm-up
        for _ in range(repeats):
            start = time.process_time()
            network(tile)
            times.append(time.process_time() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256×256×80, for a smoke run")
    parser.add_argument("--repeats", type=int, default=1, help="forward passes timed (the least counts)")
    args = parser.parse_args(argv)
    from stunet.clinical.rtstruct import Algorithm, write_rtstruct
    from stunet.version import __version__

    shape = (80, 256, 256) if args.quick else (300, 512, 512)
    start = time.perf_counter()
    seg = synthetic_labels(shape)
    made = time.perf_counter() - start
    present = int(len(np.unique(seg)) - 1)
    with tempfile.TemporaryDirectory(prefix="stunet-rtstruct-") as tmp:
        files = write_headers(Path(tmp) / "series", shape)
        names = {i: f"structure_{i}" for i in range(1, present + 1)}
        cpu, wall = time.process_time(), time.perf_counter()
        write_rtstruct(Path(tmp) / "case.rtstruct.dcm", seg, files, names, Algorithm(__version__, "STU-Net-S"))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        size = (Path(tmp) / "case.rtstruct.dcm").stat().st_size
    tiles = tile_count(shape)
    forward = forward_cpu_seconds(args.repeats)
    prediction = tiles * forward
    lines = [
        "# RT Structure Set writing against the prediction (CPU)",
        "",
        f"machine: {describe('cpu')}; torch {torch.__version__}, {torch.get_num_threads()} threads",
        f"command: python benchmarks/rtstruct.py{' --quick' if args.quick else ''}",
        "",
        f"label map: {shape[2]}×{shape[1]}×{shape[0]} (columns × rows × slices), {present} structures, made in "
        f"{made:.1f} s; file {size / 1e6:.1f} MB",
        "",
        "| what | CPU s | wall s |",
        "|---|---|---|",
        f"| RT Structure Set (tracing, coordinates, file) | {cpu:.1f} | {wall:.1f} |",
        f"| one STU-Net-S forward pass, 128³ tile | {forward:.1f} | |",
        f"| prediction's forward passes: {tiles} tiles, no mirroring | {prediction:.1f} | |",
        "",
        f"**RT Structure Set = {100 * cpu / prediction:.1f}% of the prediction's forward passes' CPU time** "
        f"(bound: 10%; with mirroring, the default, 8× less).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "rtstruct_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
