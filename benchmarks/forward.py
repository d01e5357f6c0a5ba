"""Forward and training-step speed and memory of the STU-Net sizes, against the matmul peak of the same machine.

    python benchmarks/forward.py                       # CPU: small patches, all sizes (7-15 minutes, 2 cores)
    python benchmarks/forward.py --device cuda         # GPU: 128³, fp16 and bf16 (records device, versions)
    python benchmarks/forward.py --quick               # one configuration, for a smoke run

Each configuration runs in a fresh process: median time of --repeats runs after --warmup runs, of (a) an inference
forward pass and (b) a training step (forward with deep supervision, backward, SGD step); peak memory (CUDA: max
allocated; CPU: the process's peak RSS less its RSS before the model was built). Achieved FLOP/s: 2 × convolution MACs
(forward; 3× that for a training step) per second, as a fraction of a float32 (CUDA: bf16) matrix-multiply peak
and of the rate of one large 3×3×3 convolution, both measured at the start of the same run.
Also measured: glibc's page-zeroing cost that stunet.cpu_memory.reuse_freed_memory removes (CPU), the forward pass
with 1×1 convolutions as oneDNN convolutions vs. batched matmuls, and eager vs. torch.compile.
Writes results/forward_<device>.md and .csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from machine import describe

RESULTS = Path(__file__).parent / "results"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a square matrix product, the best of a few runs."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = min(_timed(lambda: a @ b, device, 2, 5) for _ in range(2))
    return 2 * size ** 3 / seconds


def conv_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of one large 3×3×3 convolution (256 channels) through the network's own library (oneDNN, cuDNN), the
    best of a few runs. It can exceed the matmul peak: on an AMD EPYC with AVX-512, 255 vs. 180 GFLOP/s for MKL's
    sgemm."""
    channels, size = 256, 16 if device.type == "cpu" else 64
    x = torch.randn(1, channels, size, size, size, device=device, dtype=dtype)
    w = torch.randn(channels, channels, 3, 3, 3, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = min(_timed(lambda: F.conv3d(x, w, padding=1), device, 2, 5) for _ in range(2))
    return 2 * 27 * channels ** 2 * size ** 3 / seconds


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(spec: dict) -> dict:
    """One configuration, in this (fresh) process."""
    import stunet
    from stunet.models.complexity import measure
    from stunet.cpu_memory import reuse_freed_memory

    device = torch.device(spec["device"])
    if spec.get("reuse_memory", True) and device.type == "cpu":
        reuse_freed_memory()
    torch.manual_seed(0)
    baseline = _rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = stunet.create_model(spec["model"], num_classes=105, activation_checkpointing=spec.get("checkpointing",
                                                                                                  False)).to(device)
    x = torch.randn(spec["batch"], 1, *spec["patch"], device=device)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[spec["precision"]]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (
        lambda: torch.autocast(device.type, enabled=False))
    if spec["mode"] == "forward":
        model.eval().deep_supervision = False

        def step():
            with torch.inference_mode(), autocast():
                model(x)
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), 1e-3, momentum=0.99, nesterov=True)

        def step():
            with autocast():
                loss = sum(o.float().mean() for o in model(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = _timed(step, device, spec["warmup"], spec["repeats"])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    macs = measure(model.config, spec["patch"]).macs * spec["batch"]
    flops = 2 * macs * (3 if spec["mode"] == "train" else 1)
    return {**spec, "seconds": seconds, "peak_bytes": peak, "flops_per_s": flops / seconds}


def _small_at_128(spec: dict):
    """The device, STU-Net-S (105 classes) ready for inference on it, and a 128³ input: the comparisons' subject."""
    import stunet
    from stunet.cpu_memory import reuse_freed_memory

    device = torch.device(spec["device"])
    if device.type == "cpu":
        reuse_freed_memory()
    model = stunet.create_model("stunet_small", num_classes=105).to(device)
    model.eval().deep_supervision = False
    x = torch.randn(1, 1, 128, 128, 128, device=device)
    return device, model, x


def pointwise_comparison(spec: dict) -> dict:
    """STU-Net-S's inference forward pass at 128³ with its 1×1×1 convolutions as oneDNN/cuDNN conv3d vs. as batched
    matmuls (stunet.models.blocks.pointwise), alternating in one process so that both see the same machine state."""
    import stunet.models.blocks
    import stunet.models.network

    device, model, x = _small_at_128(spec)
    implementations = {"conv3d_s": lambda conv, t: conv(t), "pointwise_s": stunet.models.blocks.pointwise}
    times = {name: [] for name in implementations}
    with torch.inference_mode():
        for _ in range(spec["repeats"]):
            for name, implementation in implementations.items():
                stunet.models.blocks.pointwise = stunet.models.network.pointwise = implementation
                times[name].append(_timed(lambda: model(x), device, 1, 1))
    return {**spec, **{name: statistics.median(t) for name, t in times.items()}}


def compile_comparison(spec: dict) -> dict:
    """STU-Net-S's inference forward pass at 128³ eager vs. torch.compile (Inductor, weights frozen as constants,
    which lets it prepack convolution weights and fuse normalisation, activation and residual sums), alternating in
    one process; also the time the first compiled call takes (less when Inductor's on-disk cache holds it)."""
    device, model, x = _small_at_128(spec)
    compiled = torch.compile(model, dynamic=False, options={"freezing": True})
    with torch.inference_mode():
        start = time.perf_counter()
        out = compiled(x)
        first_call = time.perf_counter() - start
        difference = (out - model(x)).abs().max().item()
        del out
        times = {"eager_s": [], "compiled_s": []}
        for _ in range(spec["repeats"]):
            for name, fn in (("eager_s", model), ("compiled_s", compiled)):
                times[name].append(_timed(lambda: fn(x), device, 1, 1))
    return {**spec, **{name: statistics.median(t) for name, t in times.items()}, "first_call_s": first_call,
            "max_abs_difference": difference}


COMPARISONS = {"pointwise": pointwise_comparison, "compile": compile_comparison}


def _child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {**spec, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def configurations(device: str, quick: bool) -> list[dict]:
    base = {"device": device, "warmup": 1, "repeats": 3}
    if quick:
        return [{**base, "model": "stunet_small", "patch": [64, 64, 64], "batch": 1, "precision": "fp32",
                 "mode": "forward"}]
    if device == "cpu":
        # 64³ is the smallest cube with more than one voxel at the bottleneck; STU-Net-H's training step needs about
        # 21 GB (17.5 GB of fp32 weights, gradients and momentum alone) and is left out on small machines
        grid = [("stunet_small", [128, 128, 128]), ("stunet_small", [64, 64, 64]), ("stunet_base", [64, 64, 64]),
                ("stunet_large", [64, 64, 64]), ("stunet_huge", [64, 64, 64])]
        specs = [{**base, "model": m, "patch": p, "batch": 1, "precision": "fp32", "mode": mode}
                 for m, p in grid for mode in ("forward", "train")
                 if not (m == "stunet_huge" and mode == "train" and _memory_gib() < 40)]
        specs.append({**base, "model": "stunet_small", "patch": [128, 128, 128], "batch": 1, "precision": "fp32",
                      "mode": "forward", "reuse_memory": False})
        specs.append({**base, "model": "stunet_small", "patch": [64, 64, 64], "batch": 1, "precision": "bf16",
                      "mode": "forward", "warmup": 0, "repeats": 1})  # emulated on CPUs without AVX-512 BF16: slow
        return specs
    specs = []
    for model in ("stunet_small", "stunet_base", "stunet_large", "stunet_huge"):
        for precision in ("fp16", "bf16"):
            for mode, checkpointing in (("forward", False), ("train", False), ("train", "block")):
                specs.append({**base, "model": model, "patch": [128, 128, 128], "batch": 2 if mode == "train" else 1,
                              "precision": precision, "mode": mode, "checkpointing": checkpointing,
                              "warmup": 3, "repeats": 10})
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(COMPARISONS[spec["compare"]](spec) if "compare" in spec else run_one(spec)))
        return
    device = torch.device(args.device)
    peak_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    peak = matmul_peak(device, peak_dtype, 2048 if device.type == "cpu" else 8192)
    conv_rate = conv_peak(device, peak_dtype)
    rows = []
    for spec in configurations(args.device, args.quick):
        row = _child(spec)
        rows.append(row)
        print(json.dumps(row), flush=True)
    pointwise, compiled = (None, None) if args.quick else (
        _child({"compare": name, "device": args.device, "repeats": 6}) for name in ("pointwise", "compile"))
    info = [(f"device: {describe(device)}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; {time.strftime('%Y-%m-%d')}"),
            f"matrix-multiply peak ({str(peak_dtype).split('.')[-1]}): {peak / 1e9:.1f} GFLOP/s; "
            f"3×3×3 convolution rate (256 channels): {conv_rate / 1e9:.1f} GFLOP/s",
            f"command: python benchmarks/forward.py --device {args.device}" + (" --quick" if args.quick else "")]
    header = ["model", "patch", "batch", "precision", "mode", "checkpointing", "glibc memory reuse", "time (s)",
              "GFLOP/s", "% of matmul peak", "% of convolution rate", "peak memory (GiB)"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["model"], "x".join(map(str, r["patch"])), str(r["batch"]), r["precision"], r["mode"],
                          str(r.get("checkpointing") or "-"), "", "failed: " + r["error"][:60], "", "", "", ""])
            continue
        table.append([r["model"], "x".join(map(str, r["patch"])), str(r["batch"]), r["precision"], r["mode"],
                      str(r.get("checkpointing") or "-"), "yes" if r.get("reuse_memory", True) else "no",
                      f"{r['seconds']:.3f}", f"{r['flops_per_s'] / 1e9:.1f}", f"{100 * r['flops_per_s'] / peak:.0f}",
                      f"{100 * r['flops_per_s'] / conv_rate:.0f}",
                      f"{r['peak_bytes'] / 2 ** 30:.2f}"])
    md = "\n".join(info) + "\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + "\n".join(
        "| " + " | ".join(row) + " |" for row in table)
    if pointwise and "error" not in pointwise:
        md += ("\n\n1×1×1 convolutions, STU-Net-S inference forward at 128³ (median of 6, alternating in one "
               "process):"
               "\n\n| conv3d (s) | batched matmul (s) | speed-up |\n|---|---|---|\n"
               f"| {pointwise['conv3d_s']:.3f} | {pointwise['pointwise_s']:.3f} | "
               f"{pointwise['conv3d_s'] / pointwise['pointwise_s']:.2f}× |")
    if compiled and "error" not in compiled:
        md += ("\n\ntorch.compile (Inductor, frozen weights), STU-Net-S inference forward at 128³ (median of 6, "
               "alternating in one process):"
               "\n\n| eager (s) | compiled (s) | speed-up | first compiled call (s) | max abs difference |"
               "\n|---|---|---|---|---|\n"
               f"| {compiled['eager_s']:.3f} | {compiled['compiled_s']:.3f} | "
               f"{compiled['eager_s'] / compiled['compiled_s']:.2f}× | {compiled['first_call_s']:.1f} | "
               f"{compiled['max_abs_difference']:.1e} |")
    print("\n" + md)
    RESULTS.mkdir(exist_ok=True)
    name = f"forward_{device.type}" + ("_quick" if args.quick else "")
    (RESULTS / f"{name}.md").write_text(md + "\n")
    with open(RESULTS / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)


if __name__ == "__main__":
    main()
