"""GPU proof: what the STU-Net sizes, nnU-Net's commands and the two predictors do on one CUDA GPU, in one run.

    python benchmarks/gpu_proof.py                          # one CUDA GPU: under 8 minutes, all sections
    python benchmarks/gpu_proof.py --device cpu --tiny      # dry run of the same code paths on a CPU (about a minute)
    python benchmarks/gpu_proof.py --sections A,C --out /tmp/proof

Sections (each item is tried on its own: a figure, or the error it raised, never a stop):

A. Training step per size. STU-Net S/B/L/H (1 channel, 105 classes, deep supervision) at batch 2 × 128³, fp16
   (autocast + GradScaler) and bf16 (autocast, no scaler), activation checkpointing off / per stage / per block;
   SGD (lr 1e-2, momentum 0.99, Nesterov) on a deep-supervision cross-entropy against a random target (nearest-
   downsampled to each output, weights halving). Median of the timed steps after warm-up, peak allocated and reserved
   CUDA memory (peaks reset per item). L and H fall back to batch 1 when batch 2 runs out of memory. The items that
   matter most run first (bf16 + stage checkpointing and fp16 without checkpointing for every size, H with per-block
   checkpointing), then the rest of the grid. Reports the target "STU-Net-H trains at batch 2 × 128³ in 24 GB with
   bf16 and checkpointing" as MET / NOT MET from the measured peak reserved memory.
B. Real commands. A synthetic dataset (stunet.nnunet.synthetic), ``nnUNetv2_plan_and_preprocess``, a released-format
   nnU-Net v1 ``.model`` of STU-Net-S (random weights), ``nnUNetv2_train ... -pretrained_weights`` with the
   fine-tuning trainer in fp16 and in bf16 (``STUNET_PRECISION=bf16``), and one ``-num_gpus 1`` run; first/last train
   loss from nnU-Net's training log.
C. Prediction. A synthetic whole-body CT (512×512×400 at 0.8 mm) and a 105-class STU-Net-S model folder (random but
   seeded weights, written by stunet.nnunet.convert): ``stunet-predict`` vs ``nnUNetv2_predict_from_modelfolder`` (no
   mirroring, step 0.5): wall time, peak GPU memory, peak host memory of the process tree, per-label Dice agreement;
   the network alone in tiles/s. STU-Net-L if time remains.

Peak GPU memory of the prediction commands: each command runs in a child python that calls the console script's entry
point in-process and prints torch.cuda.max_memory_allocated/max_memory_reserved when it exits (exact, the
allocator's own count); nvidia-smi's memory.used is polled beside it (includes the CUDA context; lost on a timeout
of the child's own figure). Host memory: benchmarks/process_monitor.py (summed RSS of the process tree).

Every section has a time budget; once spent, its remaining items are recorded as "skipped: time budget" (commands
are killed at the budget's end). Results go to OUT/gpu_proof_<device-slug>[_tiny].md and .csv, rewritten after every
item, so an interrupted run still leaves what it measured. On a CPU, fp16 items run in fp32 (recorded as such): the
GradScaler is a CUDA tool. Exit status 0 unless the harness itself breaks.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import gc
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402
from process_monitor import run_measured  # noqa: E402

# trainers of section B (nnUNetv2_train -tr ...)
TRAINER_FP16 = "STUNetTrainer_small_ft_smoke"
TRAINER_BF16 = "STUNetTrainer_small_ft_smoke"  # with STUNET_PRECISION=bf16
TRAINER_NUM_GPUS = "STUNetTrainer_small_smoke"

SIZES = ("stunet_small", "stunet_base", "stunet_large", "stunet_huge")
NUM_CLASSES = 105
RELEASED_STRIDES = [[2, 2, 2]] * 4 + [[1, 1, 2]]  # the released models' (and their pretrained configs')
DATASET_ID = 947
# STU-Net-H at batch 2 × 128³ should train on a 24 GB card; PyTorch's allocator does not count the CUDA context
# and library handles (about 0.5-1 GiB), so the reserved peak must stay 1 GiB below the card's 24 GiB
TARGET_CARD_BYTES = 24 * 2 ** 30
TARGET_MARGIN_BYTES = 2 ** 30
# seconds per section (real mode, one GPU) and in --tiny mode; unused time carries over to the next section
BUDGETS = {"A": 190, "B": 100, "C": 130}
BUDGETS_TINY = {"A": 60, "B": 300, "C": 90}
TOTAL_BUDGET = 420  # whole run, real mode: the 8-minute limit less start-up, CUDA set-up and overshoot of a last item
TOTAL_BUDGET_TINY = 480
PEAK_MARK = "GPU_PROOF_PEAK "
GIB = 2 ** 30
# --tiny: the smallest patch STU-Net trains on (twice the total stride of 32 along one axis) and the patch the tiny
# model folder's plans get instead of the released 128³ (the networks are fully convolutional)
TINY_PATCH = (32, 32, 64)

COLUMNS = ["section", "item", "model", "precision", "checkpointing", "batch", "shape", "status", "value", "unit",
           "peak_gpu_allocated_gib", "peak_gpu_reserved_gib", "peak_gpu_nvidia_smi_gib", "peak_host_gib", "details",
           "error", "seconds"]


# -- bookkeeping ----------------------------------------------------------------------------------------------------
class Clock:
    """Section deadlines inside one total deadline; what a section leaves unused goes to the next one."""

    def __init__(self, budgets: dict[str, float], total: float):
        self.start = time.perf_counter()
        self.budgets, self.total = budgets, total
        self.deadline = self.start
        self.carry = 0.0

    def begin(self, section: str) -> None:
        now = time.perf_counter()
        self.carry = max(0.0, self.deadline - now) if self.deadline > self.start else 0.0
        self.deadline = min(now + self.budgets[section] + self.carry, self.start + self.total)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Report:
    """Rows of results, written as Markdown and CSV after every item (each file replaced whole)."""

    def __init__(self, md: Path, csv_path: Path, header: list[str]):
        self.md, self.csv, self.header = md, csv_path, header
        self.rows: list[dict] = []
        self.notes: dict[str, list[str]] = {}
        self.footer: list[str] = []

    def add(self, row: dict) -> dict:
        self.rows.append({c: row.get(c, "") for c in COLUMNS})
        line = f"[{row['section']}] {row['item']}: {row['status']}"
        if row.get("value") not in ("", None):
            line += f" {row['value']} {row.get('unit', '')}"
        if row.get("error"):
            line += f" -- {row['error'][:300]}"
        print(line, flush=True)
        self.write()
        return self.rows[-1]

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)
        print(f"[{section}] {text}", flush=True)
        self.write()

    def write(self) -> None:
        self.md.parent.mkdir(parents=True, exist_ok=True)
        _replace(self.md, self._markdown())
        tmp = self.csv.with_name(self.csv.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv)

    def _markdown(self) -> str:
        out = list(self.header)
        titles = {"A": "A. Training step per size", "B": "B. nnU-Net's commands",
                  "C": "C. Prediction: stunet-predict vs nnUNetv2_predict_from_modelfolder"}
        tables = {
            "A": ["model", "precision", "checkpointing", "batch", "shape", "status", "value", "unit",
                  "peak_gpu_allocated_gib", "peak_gpu_reserved_gib", "details"],
            "B": ["item", "status", "value", "unit", "peak_host_gib", "details"],
            "C": ["item", "model", "shape", "status", "value", "unit", "peak_gpu_allocated_gib",
                  "peak_gpu_reserved_gib", "peak_gpu_nvidia_smi_gib", "peak_host_gib", "details"],
        }
        for section in ("A", "B", "C"):
            rows = [r for r in self.rows if r["section"] == section]
            if not rows and section not in self.notes:
                continue
            out += ["", f"## {titles[section]}", ""]
            cols = tables[section]
            out.append("| " + " | ".join(c.replace("_", " ") for c in cols) + " |")
            out.append("|" + "---|" * len(cols))
            for r in rows:
                cells = [_cell(r[c]) for c in cols]
                if r["error"]:
                    cells[cols.index("status")] += ": " + _cell(r["error"][:160])
                out.append("| " + " | ".join(cells) + " |")
            out += [""] + [f"- {n}" for n in self.notes.get(section, [])]
        errors = [r for r in self.rows if r["error"]]
        if errors:
            out += ["", "## Errors in full", ""]
            out += [f"- [{r['section']}] {r['item']}: `{r['error']}`" for r in errors]
        return "\n".join(out + [""] + self.footer) + "\n"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _gib(n) -> str:
    return "" if n is None else f"{n / GIB:.2f}"


def _one_line(text: str, limit: int = 1500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _error_text(e: BaseException) -> tuple[str, str]:
    """(status, error) of an exception: 'OOM' and its message for CUDA out-of-memory, else its type and message
    and the innermost frame (to tell our own bugs from the environment's)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "OOM", "OOM: " + _one_line(e, 600)
    if "OutOfMemoryError" in str(e) or "CUDA out of memory" in str(e):  # a command's, from its log
        return "OOM", "OOM: " + _one_line(e, 600)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return "error", _one_line(f"{type(e).__name__}: {e}") + where


def attempt(report: Report, clock: Clock, section: str, item: str, fn, **fields) -> dict:
    """Run one item: its figure, or the error it raised, or 'skipped: time budget'."""
    row = {"section": section, "item": item, **fields}
    if clock.left() <= 0:
        return report.add({**row, "status": "skipped", "error": "skipped: time budget"})
    start = time.perf_counter()
    try:
        row.update(status="ok", **fn())
    except (Exception, SystemExit) as e:  # noqa: BLE001 -- every failure is a result
        status, error = _error_text(e)
        row.update(status=status, error=error)
    row["seconds"] = f"{time.perf_counter() - start:.1f}"
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return report.add(row)


# -- machine ----------------------------------------------------------------------------------------------------------
def _nvidia_smi(*query: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        done = subprocess.run([exe, *query], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _gpu_selector() -> str:
    """nvidia-smi's -i for torch's cuda:0: the index whose UUID torch reports (CUDA_VISIBLE_DEVICES may renumber),
    else the first entry of CUDA_VISIBLE_DEVICES, else 0."""
    try:
        uuid = str(torch.cuda.get_device_properties(0).uuid).lower()
    except Exception:  # noqa: BLE001 -- older torch, or no uuid
        uuid = ""
    listing = _nvidia_smi("--query-gpu=index,uuid", "--format=csv,noheader") or ""
    for line in listing.splitlines():
        index, _, gpu_uuid = (part.strip() for part in line.partition(","))
        if uuid and uuid in gpu_uuid.lower():
            return index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return visible or "0"


def header_lines(device: torch.device, args, command: str) -> list[str]:
    import nnunetv2  # noqa: F401
    from importlib.metadata import version

    import stunet

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory
        driver = (_nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader", "-i", _gpu_selector())
                  or "unknown").splitlines()[0]
        device_line = f"device: {name} ({total / GIB:.1f} GiB), driver {driver}"
    else:
        device_line = "device: CPU (no GPU); driver unknown"
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return [f"# GPU proof: {describe(device)}{' (tiny dry run)' if args.tiny else ''}", "",
            f"- {device_line}",
            f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"nnunetv2 {version('nnunetv2')}, stunet {stunet.__version__} (commit {commit})",
            f"- CPU: {describe('cpu')}",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; command: `{command}`",
            f"- sections: {','.join(args.sections)}; time budgets (s): "
            + ", ".join(f"{k} {v}" for k, v in args.budgets.items()) + f", total {args.total_budget}",
            "- status: ok (a figure), OOM (torch.cuda.OutOfMemoryError, message kept), error (the exception, in "
            "full below), skipped (time budget)"]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "device"


# -- section A: training steps ---------------------------------------------------------------------------------------
def deep_supervision_loss(outputs, targets: dict) -> torch.Tensor:
    """Cross-entropy of each output against the target downsampled to its shape, weights halving, normalised."""
    weights = [0.5 ** i for i in range(len(outputs))]
    total = sum(weights)
    loss = 0
    for w, out in zip(weights, outputs):
        shape = tuple(out.shape[2:])
        if shape not in targets:
            full = targets["full"]
            targets[shape] = F.interpolate(full[:, None].float(), size=shape, mode="nearest")[:, 0].long()
        loss = loss + (w / total) * F.cross_entropy(out.float(), targets[shape])
    return loss


def training_step_item(name: str, precision: str, checkpointing, batch: int, patch, device: torch.device,
                       warmup: int, steps: int) -> dict:
    import stunet

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = stunet.create_model(name, in_channels=1, num_classes=NUM_CLASSES, deep_supervision=True,
                                    activation_checkpointing=checkpointing)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(batch, 1, *patch, device=device)
    targets = {"full": torch.randint(0, NUM_CLASSES, (batch, *patch), device=device)}
    run_precision = precision if (cuda or precision != "fp16") else "fp32"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[run_precision]
    scaler = torch.amp.GradScaler("cuda") if run_precision == "fp16" else None
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = deep_supervision_loss(model(x), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    values = [float(v) for v in losses]
    details = (f"median of {steps} steps after {warmup} warm-up; loss {values[0]:.3f} -> {values[-1]:.3f}"
               f"{'' if all(math.isfinite(v) for v in values) else ' (NOT finite)'}")
    if precision == "fp16" and not cuda:
        details += "; fp16 item run in fp32 on the CPU (no GradScaler)"
    result = {"value": f"{statistics.median(times):.3f}", "unit": "s/step", "details": details,
              "precision": run_precision if run_precision == precision else f"{precision}->fp32"}
    if cuda:
        result.update(peak_gpu_allocated_gib=_gib(torch.cuda.max_memory_allocated(device)),
                      peak_gpu_reserved_gib=_gib(torch.cuda.max_memory_reserved(device)))
    else:
        result["details"] += "; CPU: no per-item peak memory"
    return result


def section_a_plan(tiny: bool) -> list[tuple[str, str, object]]:
    """(model, precision, checkpointing) in order of importance."""
    sizes = ("stunet_small",) if tiny else SIZES
    grid = [(m, p, c) for m in sizes for p in ("fp16", "bf16") for c in (False, "stage", "block")]
    first = [(m, "bf16", "stage") for m in SIZES] + [(m, "fp16", False) for m in SIZES] + [
        ("stunet_huge", "bf16", "block")]
    if tiny:
        first = [("stunet_small", "bf16", "stage"), ("stunet_small", "fp16", False), ("stunet_base", "bf16", "stage")]
    return first + [g for g in grid if g not in first]


def section_a(report: Report, clock: Clock, device: torch.device, tiny: bool) -> None:
    patch = TINY_PATCH if tiny else (128, 128, 128)
    warmup, steps = (0, 1) if tiny else (2, 5)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as nnU-Net trains
    reserved: dict[str, tuple[str, str, str]] = {}
    for name, precision, checkpointing in section_a_plan(tiny):
        for batch in (2, 1):
            fields = {"model": name, "precision": precision, "checkpointing": checkpointing or "none",
                      "batch": batch, "shape": "x".join(map(str, patch))}
            row = attempt(report, clock, "A", f"{name} {precision} checkpointing={checkpointing or 'none'} "
                                              f"batch {batch}", lambda: training_step_item(
                                                  name, precision, checkpointing, batch, patch, device, warmup, steps),
                          **fields)
            if name == "stunet_huge" and precision == "bf16" and batch == 2 and checkpointing:
                reserved[checkpointing] = (row["status"], row["peak_gpu_reserved_gib"], row["error"])
            # L and H also at batch 1 when batch 2 did not fit
            if not (row["status"] == "OOM" and name in ("stunet_large", "stunet_huge")):
                break
    report.note("A", h_target(reserved, device, tiny))
    if device.type == "cuda":
        report.note("A", "cudnn.benchmark on (as nnU-Net trains); peaks include warm-up, when cuDNN tries "
                         "algorithms and their workspaces")


def h_target(reserved: dict, device: torch.device, tiny: bool) -> str:
    title = "target 'H in 24 GB: batch 2, 128³, bf16, checkpointing'"
    if tiny or device.type != "cuda":
        return f"{title}: not measured (needs a CUDA GPU and full-size patches)"
    limit = TARGET_CARD_BYTES - TARGET_MARGIN_BYTES
    parts, met = [], []
    for mode in ("stage", "block"):
        status, value, error = reserved.get(mode, ("skipped", "", "not run"))
        if status == "OOM":
            parts.append(f"{mode}: NOT MET (OOM on this {torch.cuda.get_device_name(device)})")
            met.append(False)
            continue
        if status != "ok" or not value:
            parts.append(f"{mode}: not measured ({error[:120]})")
            continue
        gib = float(value)
        ok = gib * GIB <= limit
        met.append(ok)
        parts.append(f"{mode}: {'MET' if ok else 'NOT MET'} (peak reserved {gib:.2f} GiB)")
    verdict = "MET" if any(met) else "NOT MET" if met else "NOT MEASURED"
    return (f"{title}: **{verdict}** -- " + "; ".join(parts)
            + f" (limit {limit / GIB:.0f} GiB reserved: a 24 GiB card less 1 GiB for the CUDA context)")


# -- commands -----------------------------------------------------------------------------------------------------------
class NvidiaSmiPeak:
    """Peak of nvidia-smi's memory.used for our GPU while the block runs, less its value before (None without
    nvidia-smi)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak = None

    def _read(self) -> int | None:
        out = _nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", self.selector)
        try:
            return int(out.splitlines()[0]) * 2 ** 20 if out else None
        except ValueError:
            return None

    def __enter__(self):
        if self.enabled:
            self.selector = _gpu_selector()
            self.before = self._read()
            self.high = self.before
            self.stop = threading.Event()

            def poll():
                while not self.stop.wait(0.5):
                    value = self._read()
                    if value is not None and (self.high is None or value > self.high):
                        self.high = value

            self.thread = threading.Thread(target=poll, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()
            if self.before is not None and self.high is not None:
                self.peak = self.high - self.before
        return False


def run_command(command: list[str], env: dict, log: Path, timeout: float) -> tuple[float, int]:
    """process_monitor.run_measured (wall time, peak RSS of the tree) under a time limit; a failure raises a
    RuntimeError with the command's last error line."""
    if timeout < 5:
        raise TimeoutError("skipped: time budget (less than 5 s left for the command)")
    limited = (["timeout", "-k", "10", str(int(timeout))] if shutil.which("timeout") else []) + command
    start = time.perf_counter()
    try:
        return run_measured(limited, env, log)
    except RuntimeError as e:
        code = re.search(r"exited (-?\d+)", str(e))
        timed_out = time.perf_counter() - start >= int(timeout) - 1  # 137 is also what the OOM killer leaves
        if code and code.group(1) in ("124", "137") and limited[0] == "timeout" and timed_out:
            raise TimeoutError(f"{Path(command[0]).name} did not finish within {int(timeout)} s (time budget); "
                               f"log {log}") from None
        if code and code.group(1) in ("137", "-9"):
            raise RuntimeError(f"{Path(command[0]).name} was killed (SIGKILL: out of host memory?): "
                               f"{last_error(log)}") from e
        raise RuntimeError(f"{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(command))[:300]} "
                           f"exited {code.group(1) if code else '?'}: {last_error(log)}") from e


def last_error(log: Path) -> str:
    """The last line of a log that names an exception (else its last line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line) or "error:" in line:
            return _one_line(line, 600)
    return _one_line(lines[-1], 600) if lines else "(empty log)"


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def nnunet_environment(root: Path, device: torch.device) -> dict:
    from stunet.nnunet.env import with_trainer_folder

    workers = "1" if device.type == "cpu" else str(max(1, min(4, (os.cpu_count() or 2) // 2)))
    env = with_trainer_folder(dict(os.environ))
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_n_proc_DA=workers, nnUNet_def_n_proc=workers,
               nnUNet_compile="false")
    return env


def released_small_model(path: Path, head_scale: float = 1.0, model: str = "stunet_small") -> Path:
    """A 105-class STU-Net with the released layout and seeded random weights, as nnU-Net v1 saved the released
    checkpoints (.model + .model.pkl, written by tests/checkpoint_helpers.py). ``head_scale`` sharpens the heads so
    that random logits rarely tie."""
    if path.exists():
        return path
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoint_helpers import write_v1

    import stunet

    torch.manual_seed(0)
    net = stunet.create_model(model, strides=RELEASED_STRIDES, num_classes=NUM_CLASSES)
    if head_scale != 1.0:
        with torch.no_grad():
            for head in net.seg_outputs:
                head.weight.mul_(head_scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_v1(net.state_dict(), path)


# -- section B: nnU-Net's commands ----------------------------------------------------------------------------------
def parse_training_log(fold: Path) -> dict:
    logs = sorted(fold.glob("training_log_*.txt"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"no training_log_*.txt in {fold}")
    text = logs[-1].read_text(errors="replace")
    number = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
    losses = [float(v) for v in re.findall(rf"train_loss\s+(?:np\.float\d+\()?({number})", text)]
    if not losses:
        raise ValueError(f"{logs[-1]}: no train_loss line")
    finite = all(math.isfinite(v) for v in losses)
    return {"losses": losses, "finite": finite, "decreasing": finite and losses[-1] < losses[0],
            "pretrained": "Loaded pretrained weights" in text}


def section_b(report: Report, clock: Clock, device: torch.device, tiny: bool, work: Path) -> None:
    from stunet.nnunet.synthetic import write_dataset

    root = work / "nnunet"
    env = nnunet_environment(root, device)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shape = (24, 32, 32) if tiny else (48, 64, 64)
    state = {}

    def plan():
        write_dataset(root / "raw", dataset_id=DATASET_ID, num_train=10, num_test=2, shape=shape)
        wall, rss = run_command([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                                 "-np", env["nnUNet_def_n_proc"], "-npfp", env["nnUNet_def_n_proc"]], env,
                                logs / "plan_and_preprocess.log", clock.left())
        plans = json.loads(next((root / "preprocessed").glob("Dataset*/nnUNetPlans.json")).read_text())
        cfg = plans["configurations"]["3d_fullres"]
        state["planned"] = True
        return {"value": f"{wall:.1f}", "unit": "s", "peak_host_gib": _gib(rss),
                "details": f"10 cases of {'x'.join(map(str, shape))}; patch {cfg['patch_size']}, "
                           f"batch {cfg['batch_size']}"}

    attempt(report, clock, "B", "nnUNetv2_plan_and_preprocess (synthetic dataset)", plan)

    def weights():
        state["weights"] = released_small_model(work / "released" / "small_ep4k.model")
        return {"value": f"{state['weights'].stat().st_size / 2 ** 20:.1f}", "unit": "MiB",
                "details": f"{state['weights'].name} + .pkl, nnU-Net v1 layout, 105 classes, seeded random weights"}

    attempt(report, clock, "B", "released-format STU-Net-S .model", weights)

    def train(trainer: str, *extra: str, precision: str = "fp16"):
        def run():
            if "planned" not in state:
                raise RuntimeError("not run: nnUNetv2_plan_and_preprocess failed")
            if "-pretrained_weights" in extra and "weights" not in state:
                raise RuntimeError("not run: the released-format .model was not written")
            args = [a if a != "WEIGHTS" else str(state.get("weights")) for a in extra]
            run_env = {**env, "STUNET_PRECISION": precision}  # the same trainer in either precision
            wall, rss = run_command([bin_path("nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
                                     "-device", device.type, *args], run_env,
                                    logs / f"train_{trainer}_{precision}.log", clock.left())
            folds = list((root / "results").glob(f"Dataset*/{trainer}__nnUNetPlans__3d_fullres/fold_0"))
            if not folds:
                raise FileNotFoundError(f"no results folder of {trainer} under {root / 'results'}")
            parsed = parse_training_log(folds[0])
            final = (folds[0] / "checkpoint_final.pth").is_file()
            losses = parsed["losses"]
            return {"value": f"{wall:.1f}", "unit": "s", "peak_host_gib": _gib(rss),
                    "details": f"train loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epochs, "
                               f"{'finite' if parsed['finite'] else 'NOT finite'}, "
                               f"{'decreasing' if parsed['decreasing'] else 'NOT decreasing'}; "
                               f"checkpoint_final {'written' if final else 'MISSING'}"
                               + ("; pretrained weights loaded" if parsed["pretrained"] else "")}
        return run

    attempt(report, clock, "B", f"nnUNetv2_train -tr {TRAINER_FP16} -pretrained_weights (fp16)",
            train(TRAINER_FP16, "-pretrained_weights", "WEIGHTS"))
    attempt(report, clock, "B", f"nnUNetv2_train -tr {TRAINER_BF16} -pretrained_weights (bf16, STUNET_PRECISION)",
            train(TRAINER_BF16, "-pretrained_weights", "WEIGHTS", precision="bf16"))
    attempt(report, clock, "B", f"nnUNetv2_train -tr {TRAINER_NUM_GPUS} -num_gpus 1",
            train(TRAINER_NUM_GPUS, "-num_gpus", "1"))
    if device.type == "cpu":
        report.note("B", "-device cpu: nnU-Net's autocast (fp16, or bf16 with STUNET_PRECISION=bf16) applies on CUDA "
                         "only, so on a CPU these runs check that the commands and trainers work, in fp32")


# -- section C: prediction ------------------------------------------------------------------------------------------
def synthetic_ct(path: Path, shape, spacing: float = 0.8, seed: int = 0) -> Path:
    """A CT-like int16 volume (z, y, x): air, an elliptic body of soft tissue, two lungs, a spine, a liver and two
    kidneys, with noise; isotropic ``spacing`` mm."""
    import SimpleITK as sitk

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    ct = np.full(shape, -1000, np.float32)

    def ellipsoid(cz, cy, cx, rz, ry, rx):
        return ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1

    ct[np.broadcast_to((y / 0.6) ** 2 + (x / 0.85) ** 2 <= 1, shape)] = 30
    ct[ellipsoid(0.45, -0.05, 0.35, 0.35, 0.4, 0.28)] = -850  # lungs (upper body)
    ct[ellipsoid(0.45, -0.05, -0.35, 0.35, 0.4, 0.28)] = -850
    ct[ellipsoid(-0.05, 0.0, -0.3, 0.18, 0.35, 0.3)] = 65  # liver
    ct[ellipsoid(-0.25, 0.3, 0.3, 0.1, 0.12, 0.1)] = 35  # kidneys
    ct[ellipsoid(-0.25, 0.3, -0.3, 0.1, 0.12, 0.1)] = 35
    ct[np.broadcast_to((y - 0.4) ** 2 + x ** 2 <= 0.08 ** 2, shape)] = 450  # spine
    ct += rng.standard_normal(shape, dtype=np.float32) * 20
    image = sitk.GetImageFromArray(ct.astype(np.int16))
    image.SetSpacing((spacing,) * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def model_folder(work: Path, model: str, patch=None) -> Path:
    """A 105-class model folder (plans.json, dataset.json, fold_all/) of a released-layout network with seeded
    random weights whose heads are sharpened, written by stunet.nnunet.convert as stunet-convert does; ``patch`` replaces
    the plans' 128³ tiles (tiny runs)."""
    from stunet.weights.checkpoint import load_checkpoint
    from stunet.nnunet.convert import write_model_folder

    folder = work / f"model_{model}"
    if not (folder / "fold_all" / "checkpoint_final.pth").is_file():
        checkpoint = released_small_model(work / "weights" / f"{model}_random.model", head_scale=20.0, model=model)
        write_model_folder(load_checkpoint(checkpoint), folder)
        if patch:
            plans = json.loads((folder / "plans.json").read_text())
            for configuration in plans["configurations"].values():
                configuration["patch_size"] = list(patch)
            _replace(folder / "plans.json", json.dumps(plans, indent=2))
    return folder


def throughput_item(model: str, patch, device: torch.device, warmup: int, repeats: int) -> dict:
    import stunet

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    with torch.device(device):
        net = stunet.create_model(model, in_channels=1, num_classes=NUM_CLASSES, strides=RELEASED_STRIDES,
                                  deep_supervision=False)
    net.eval()
    x = torch.randn(1, 1, *patch, device=device)
    dtype = torch.float16 if cuda else None
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(warmup + repeats):
            start = time.perf_counter()
            net(x)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {"value": f"{1 / seconds:.2f}", "unit": "tiles/s", "precision": "fp16" if cuda else "fp32",
              "details": f"released strides, batch 1, no deep supervision, inference_mode, median of {repeats} "
                         f"after {warmup} warm-up; "
                         f"{seconds * 1000:.1f} ms/tile" + ("" if cuda else "; fp32 on the CPU")}
    if cuda:
        result.update(peak_gpu_allocated_gib=_gib(torch.cuda.max_memory_allocated(device)),
                      peak_gpu_reserved_gib=_gib(torch.cuda.max_memory_reserved(device)))
    return result


def predict_item(kind: str, folder: Path, inputs: Path, out: Path, device: torch.device, log: Path,
                 timeout: float) -> dict:
    """Run one predictor through this script's --run-cli child; wall time, peaks, and the output's path."""
    if kind == "stunet-predict":
        argv = ["-i", str(inputs), "-o", str(out), "-m", str(folder), "-f", "all", "--disable-tta", "--device",
                device.type, "--overwrite"]
    else:
        workers = "1" if device.type == "cpu" else "2"
        argv = ["-i", str(inputs), "-o", str(out), "-m", str(folder), "-f", "all", "--disable_tta", "-device",
                device.type, "-npp", workers, "-nps", workers]
    env = {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1"}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(var, str(out.parent / var))
    smi = NvidiaSmiPeak(device.type == "cuda")
    try:
        with smi:
            wall, rss = run_command([sys.executable, str(Path(__file__).resolve()), "--run-cli", kind, "--", *argv],
                                    env, log, timeout)
    except TimeoutError as e:
        seen = f"; nvidia-smi peak until then {smi.peak / GIB:.2f} GiB" if smi.peak is not None else ""
        raise TimeoutError(f"{e}{seen}") from None
    peaks = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(PEAK_MARK):
            peaks = json.loads(line[len(PEAK_MARK):])
    result = {"value": f"{wall:.1f}", "unit": "s", "peak_host_gib": _gib(rss),
              "peak_gpu_nvidia_smi_gib": _gib(smi.peak), "details": "no mirroring, step 0.5"}
    phase_lines = re.findall(r"^\S+: (read [\d.]+ s, .*)$", log.read_text(errors="replace").replace("\r", "\n"),
                             re.MULTILINE)
    if phase_lines:  # stunet-predict's per-case phases (network = the forward passes, synchronised)
        result["details"] += "; phases: " + phase_lines[-1]
    if peaks.get("allocated") is not None:
        result.update(peak_gpu_allocated_gib=_gib(peaks["allocated"]), peak_gpu_reserved_gib=_gib(peaks["reserved"]))
    return result


def agreement_item(a: Path, b: Path) -> dict:
    import SimpleITK as sitk

    from stunet.nnunet.synthetic import dice_per_label

    x = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
    if x.shape != y.shape:
        raise ValueError(f"the two outputs differ in shape: {x.shape} vs {y.shape}")
    labels = sorted((set(np.unique(x).tolist()) | set(np.unique(y).tolist())) - {0})
    if not labels:
        raise ValueError("neither output holds a foreground label")
    scores = dice_per_label(x, y, labels)
    worst = sorted(scores.items(), key=lambda kv: kv[1])
    return {"value": f"{statistics.mean(scores.values()):.4f}", "unit": "mean Dice",
            "details": f"{len(labels)} foreground labels; min {worst[0][1]:.4f} (label {worst[0][0]}); per label "
                       + " ".join(f"{k}:{v:.4f}" for k, v in sorted(scores.items()))}


def section_c(report: Report, clock: Clock, device: torch.device, tiny: bool, work: Path) -> None:
    shape = (48, 64, 64) if tiny else (400, 512, 512)
    shape_text = "x".join(map(str, shape[::-1])) + " at 0.8 mm"
    patch = TINY_PATCH if tiny else (128, 128, 128)
    warmup, repeats = (1, 2) if tiny else (3, 20)
    state = {}

    def make_input():
        start = time.perf_counter()
        synthetic_ct(work / "wholebody" / "ct_0000.nii.gz", shape)
        return {"value": f"{time.perf_counter() - start:.1f}", "unit": "s",
                "details": f"synthetic CT, {np.prod(shape) / 1e6:.1f} M voxels (x, y, z {shape_text})"}

    attempt(report, clock, "C", "synthetic whole-body CT", make_input, shape=shape_text)

    def make_folder(model):
        def run():
            start = time.perf_counter()
            state[model] = model_folder(work, model, TINY_PATCH if tiny else None)
            return {"value": f"{time.perf_counter() - start:.1f}", "unit": "s",
                    "details": f"{state[model].name}: stunet.nnunet.convert.write_model_folder of a released-layout "
                               f"checkpoint (105 classes, seeded random weights, heads x20)"
                               + (f"; tiles {'x'.join(map(str, TINY_PATCH))} instead of 128³" if tiny else "")}
        return run

    def throughput(model):
        return lambda: throughput_item(model, patch, device, warmup, repeats)

    def predictions(model, tag):
        outs = {}

        def run_one(kind):
            def run():
                if model not in state:
                    raise RuntimeError("not run: the model folder was not written")
                out = work / f"out_{tag}_{kind}"
                result = predict_item(kind, state[model], work / "wholebody", out, device,
                                      work / f"predict_{tag}_{kind}.log", clock.left())
                output = out / "ct.nii.gz"
                if not output.is_file():
                    raise FileNotFoundError(f"{kind} wrote no {output}")
                outs[kind] = output
                return result
            return run

        attempt(report, clock, "C", f"stunet-predict --device {device.type} ({tag})", run_one("stunet-predict"),
                model=model, shape=shape_text)
        attempt(report, clock, "C", f"nnUNetv2_predict_from_modelfolder -device {device.type} ({tag})",
                run_one("nnUNetv2_predict_from_modelfolder"), model=model, shape=shape_text)

        def agree():
            missing = [k for k in ("stunet-predict", "nnUNetv2_predict_from_modelfolder") if k not in outs]
            if missing:
                raise RuntimeError(f"not computed: no output of {', '.join(missing)}")
            return agreement_item(outs["stunet-predict"], outs["nnUNetv2_predict_from_modelfolder"])

        attempt(report, clock, "C", f"Dice agreement, stunet-predict vs nnU-Net ({tag})", agree, model=model,
                shape=shape_text)

    patch_text = "x".join(map(str, patch))
    attempt(report, clock, "C", "network alone: STU-Net-S", throughput("stunet_small"), model="stunet_small",
            shape=patch_text)
    attempt(report, clock, "C", "model folder STU-Net-S", make_folder("stunet_small"), model="stunet_small")
    predictions("stunet_small", "S")
    # STU-Net-L: only with time left, and not in the tiny dry run (the same code paths as S, several times slower)
    if tiny:
        report.note("C", "STU-Net-L left out of the tiny dry run (same code paths as STU-Net-S)")
    elif clock.left() > 60:
        attempt(report, clock, "C", "network alone: STU-Net-L", throughput("stunet_large"), model="stunet_large",
                shape=patch_text)
        attempt(report, clock, "C", "model folder STU-Net-L", make_folder("stunet_large"), model="stunet_large")
        predictions("stunet_large", "L")
    else:
        report.note("C", "STU-Net-L skipped: time budget (needs more than 60 s left)")
    report.note("C", "peak GPU allocated/reserved of a command: torch.cuda.max_memory_* printed by the command's "
                     "child python at exit (exact); 'nvidia smi': polled memory.used less its value before "
                     "(includes the CUDA context); host: summed RSS of the process tree (benchmarks/"
                     "process_monitor.py)")


# -- child: a console script in-process, reporting its peak GPU memory -------------------------------------------
def run_cli(name: str, argv: list[str]) -> None:
    from importlib.metadata import entry_points

    try:
        Path("/proc/self/oom_score_adj").write_text("1000")  # the kernel kills this child first, not the harness
    except OSError:
        pass
    found = [e for e in entry_points(group="console_scripts") if e.name == name]
    if not found:
        sys.exit(f"no console script {name}")

    def peak():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            print(PEAK_MARK + json.dumps({"allocated": torch.cuda.max_memory_allocated(),
                                          "reserved": torch.cuda.max_memory_reserved()}), flush=True)
        else:
            print(PEAK_MARK + json.dumps({"allocated": None, "reserved": None}), flush=True)

    atexit.register(peak)
    sys.argv = [name, *argv]
    result = found[0].load()()
    sys.exit(result if isinstance(result, int) else 0)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--run-cli":
        rest = sys.argv[3:]
        run_cli(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and schedules (CPU dry run)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the .md and .csv")
    parser.add_argument("--sections", default="A,B,C", help="comma-separated subset of A,B,C")
    parser.add_argument("--work", type=Path, help="folder for datasets, models and outputs (default: a temporary "
                                                  "one, removed at the end)")
    parser.add_argument("--total-budget", type=float, help="seconds for the whole run (default: 420; 480 with --tiny)")
    args = parser.parse_args()
    args.sections = [s.strip().upper() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in ("A", "B", "C")]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from A, B, C")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch (use --device cpu --tiny for a dry run)")
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    if device.type == "cpu":
        from stunet.cpu_memory import reuse_freed_memory
        reuse_freed_memory()
    args.budgets = dict(BUDGETS_TINY if args.tiny else BUDGETS)
    args.total_budget = args.total_budget or (TOTAL_BUDGET_TINY if args.tiny else TOTAL_BUDGET)
    name = slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
    name += "_tiny" if args.tiny else ""
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/gpu_proof.py " + " ".join(sys.argv[1:])
    report = Report(args.out / f"gpu_proof_{name}.md", args.out / f"gpu_proof_{name}.csv",
                    header_lines(device, args, command.strip()))
    report.write()
    clock = Clock(args.budgets, args.total_budget)
    work = args.work or Path(tempfile.mkdtemp(prefix="stunet_gpu_proof_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for section, run in (("A", lambda: section_a(report, clock, device, args.tiny)),
                             ("B", lambda: section_b(report, clock, device, args.tiny, work)),
                             ("C", lambda: section_c(report, clock, device, args.tiny, work))):
            if section in args.sections:
                clock.begin(section)
                run()
    finally:
        report.footer = [f"Total wall time: {clock.elapsed():.0f} s."]
        report.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {report.md} and {report.csv}")


if __name__ == "__main__":
    main()
