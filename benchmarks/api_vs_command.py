"""The Python API (``Segmenter.from_path(...).predict_folder(...)``) against ``stunet-predict`` on the same case.

    python benchmarks/api_vs_command.py [--rounds 2] [--work /tmp/stunet_bench_api]

Each measurement is a fresh process (so the allocator setting each path makes is its own): ``main(argv)`` of
stunet-predict, or the API's two calls, from before the model is loaded to the written output: its wall time, its
CPU time (user + system, all threads: what other processes on a shared machine disturb least; the allocator's page
zeroing is system time) and the network's wall seconds of the case. A third row runs the API with
:func:`stunet.cpu_memory.reuse_freed_memory` disabled, the cost a Segmenter would pay without its CPU setting. Rounds
alternate the three; the round with the least CPU time of each is kept.

Model: the tests' STU-Net-S model folder (tests/predict_helpers.py, random weights, five labels) with 64×96×96
patches; case: one synthetic oblique image of 32×160×160 voxels (4 tiles at 1.5 mm), no mirroring, CPU.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import describe  # noqa: E402

MODES = {"stunet-predict": "command", "Segmenter.predict_folder": "api",
         "Segmenter.predict_folder, allocator defaults": "api-default-allocator"}
TIMING = re.compile(r"network ([\d.]+) s")


def prepare(work: Path) -> tuple[Path, Path]:
    from predict_helpers import make_model_folder, write_image
    from stunet.nnunet.plans import CONFIGURATION
    from stunet.nnunet.synthetic import make_case

    model = work / "model"
    if not (model / "plans.json").is_file():
        make_model_folder(model)
        plans = json.loads((model / "plans.json").read_text())
        plans["configurations"][CONFIGURATION]["patch_size"] = [64, 96, 96]
        (model / "plans.json").write_text(json.dumps(plans))
    source = work / "in"
    if not source.is_dir():
        source.mkdir(parents=True)
        images, _ = make_case(np.random.default_rng(5), (32, 160, 160), 1)
        write_image(source / "case_0000.nii.gz", images[0], seed=5)
    return model, source


def measure(mode: str, model: Path, source: Path, out: Path) -> dict:
    """Run in a fresh process: seconds from model loading to the written output, and the network's seconds."""
    start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if mode == "command":
        import contextlib
        import io
        from stunet.cli.predict import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(["-i", str(source), "-o", str(out), "-m", str(model), "--disable-tta", "--device", "cpu"])
            except SystemExit as stop:
                assert not stop.code, err.getvalue()
        network = float(TIMING.search(err.getvalue()).group(1))
    else:
        import stunet
        if mode == "api-default-allocator":
            import stunet.prediction.segmenter as segmenter
            segmenter.reuse_freed_memory = lambda: False
        seg = stunet.Segmenter.from_path(model, device="cpu", mirroring=False)
        run = seg.predict_folder(source, out, progress=False)
        network = run.timings["case"]["network"]
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
    return {"seconds": time.perf_counter() - start, "cpu": cpu, "network": network}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_api"))
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "api_vs_command_cpu.md")
    parser.add_argument("--one", choices=sorted(MODES.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    model, source = prepare(args.work)
    if args.one:
        out = args.work / f"out_{args.one}_{time.time_ns()}"
        print(json.dumps(measure(args.one, model, source, out)))
        return
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, mode in MODES.items():
            done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--one", mode],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name}: {result['seconds']:.2f} s, CPU {result['cpu']:.2f} s (network {result['network']:.2f} s)",
                  flush=True)
            if name not in best or result["cpu"] < best[name]["cpu"]:
                best[name] = result
    import torch
    base = best["stunet-predict"]
    lines = ["Case: 32×160×160 synthetic image (4 tiles of 64×96×96 at 1.5 mm), the tests' STU-Net-S model folder "
             "(random weights, 5 labels), no mirroring, step 0.5, CPU; of "
             f"{args.rounds} fresh processes each, the one with the least CPU time.",
             f"Machine: {describe('cpu')}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
             f"Command: `python benchmarks/api_vs_command.py --rounds {args.rounds}`.", "",
             "| path | CPU time, model load to output (s) | ratio | wall (s) | ratio | network wall (s) |",
             "|---|---|---|---|---|---|"]
    for name, result in best.items():
        lines.append(f"| {name} | {result['cpu']:.2f} | {result['cpu'] / base['cpu']:.3f} | {result['seconds']:.2f} | "
                     f"{result['seconds'] / base['seconds']:.3f} | {result['network']:.2f} |")
    table = "\n".join(lines)
    print(table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(table + "\n")


if __name__ == "__main__":
    main()
