"""stunet-predict vs nnUNetv2_predict on a real CT with the same 105-class STU-Net-S weights, on this machine.

    python benchmarks/predict.py [--checkpoint small_ep4k.model] [--work /tmp/stunet_bench] [--bf16]

Measures end-to-end wall time and peak resident memory (summed over each command's process tree) of both commands on
the same input and weights, and their agreement (Dice between the two label maps, mean and minimum over the
foreground labels either one holds). Both run without test-time mirroring, step size 0.5, on the CPU, one worker
process each (2-core machine).

Input: the example CT of ../shared/data/totalsegmentator_examples (122×101×30 voxels at 3 mm) stacked four times
along z and cut to 122×101×112, the baseline case (27 tiles of 128³ at 1.5 mm). Weights: the released
small_ep4k.model when given; otherwise a 105-class STU-Net-S briefly fitted to that CT's reference segmentation (so
its outputs are confident and structured like a trained model's; cached in --work).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from machine import describe
from process_monitor import run_measured

SHARED = Path(os.environ.get("STUNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
EXAMPLE = SHARED / "data" / "totalsegmentator_examples"
BIN = Path(sys.executable).parent


def make_input(folder: Path) -> Path:
    ct = sitk.ReadImage(str(EXAMPLE / "example_ct_sm.nii.gz"))
    array = np.concatenate([sitk.GetArrayFromImage(ct)] * 4, axis=0)[:112]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(ct.GetSpacing()), image.SetOrigin(ct.GetOrigin()), image.SetDirection(ct.GetDirection())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    seg = sitk.GetImageFromArray(np.concatenate([sitk.GetArrayFromImage(
        sitk.ReadImage(str(EXAMPLE / "example_seg.nii.gz")))] * 4, axis=0)[:112])
    seg.CopyInformation(image)
    sitk.WriteImage(seg, str(folder.parent / "ct_reference_seg.nii.gz"))
    return path


def fit_weights(image: Path, reference: Path, out: Path, iterations: int) -> Path:
    """A 105-class STU-Net-S fitted to one CT (labels above 104 dropped), saved like a released .model."""
    import stunet
    from stunet.cpu_memory import reuse_freed_memory
    from stunet.prediction.model import Model
    from stunet.prediction.sliding_window import Predictor
    from stunet.nnunet.plans import CONFIGURATION, dataset_json_for_pretrained, plans_for_pretrained
    from stunet.weights.pretrained import get_pretrained_config

    reuse_freed_memory()
    config = get_pretrained_config("stunet_small.totalseg104")
    torch.manual_seed(0)
    net = stunet.create_model(config.name)
    model = Model([net], plans_for_pretrained(config, "bench"), CONFIGURATION, dataset_json_for_pretrained(config))
    predictor = Predictor(model)
    image_np, props = predictor.read([image])
    seg_np = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))[None].astype(np.int16)
    seg_np[seg_np > 104] = 0
    cm = model.configuration_manager
    data, seg, _ = cm.preprocessor_class(verbose=False).run_case_npy(image_np, seg_np, props, model.plans_manager,
                                                                      cm, model.dataset_json)
    data, seg = torch.from_numpy(data), torch.from_numpy(seg.astype(np.int64)).clamp_(min=0)  # -1: outside the crop
    net.train().deep_supervision = False
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    patch = (64, 64, 64)
    rng = np.random.default_rng(0)
    foreground = torch.nonzero(seg[0] > 0)
    start = time.time()
    for it in range(iterations):
        if it % 3 and len(foreground):  # two patches in three centred on a labelled voxel, like nnU-Net's sampling
            centre = foreground[int(rng.integers(len(foreground)))].tolist()
            corner = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, s, p in zip(centre, data.shape[1:], patch)]
        else:
            corner = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(data.shape[1:], patch)]
        window = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        x, y = data[(slice(None), *window)][None], seg[(0, *window)][None]
        pad = [max(0, p - s) for p, s in zip(patch, x.shape[2:])]
        if any(pad):
            x = torch.nn.functional.pad(x, [q for p in reversed(pad) for q in (0, p)])
            y = torch.nn.functional.pad(y, [q for p in reversed(pad) for q in (0, p)])
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 20 == 0:
            print(f"  fitting benchmark weights: iteration {it}/{iterations}, loss {loss.item():.3f}, "
                  f"{time.time() - start:.0f} s", flush=True)
    torch.save({"state_dict": net.state_dict(), "epoch": iterations}, out)
    return out


def prepared(work: Path, checkpoint: Path | None = None, iterations: int = 240) -> tuple[Path, Path]:
    """(the benchmark's input CT, the weights: ``checkpoint``, or the S fitted to that CT, fitted on first use)."""
    if not EXAMPLE.is_dir():
        sys.exit(f"benchmark input {EXAMPLE} is absent (../shared beside the checkout, or STUNET_SHARED)")
    image = make_input(work / "input")
    checkpoint = checkpoint or work / "fitted_small.model"
    if not checkpoint.exists():
        fit_weights(image, work / "ct_reference_seg.nii.gz", checkpoint, iterations)
    return image, checkpoint


def command_env(work: Path) -> dict:
    """The commands' environment: one worker process each, all cores to torch, nnU-Net's folders under ``work``."""
    env = {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": str(os.cpu_count())}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.setdefault(var, str(work / var))
    return env


def dice_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    scores = [2 * np.sum((a == l) & (b == l)) / (np.sum(a == l) + np.sum(b == l)) for l in labels]
    return float(np.mean(scores)), float(np.min(scores)), len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="small_ep4k.model (released weights); default: fitted")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stunet_bench_predict"))
    parser.add_argument("--fit-iterations", type=int, default=240)
    parser.add_argument("--bf16", action="store_true",
                        help="also time stunet-predict --pretrained with --precision bf16; worth it only on CPUs with "
                             "native bfloat16 (avx512_bf16, amx_bf16), elsewhere it is emulated and ~300x slower")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "predict_cpu.md")
    args = parser.parse_args()
    work = args.work
    image, checkpoint = prepared(work, args.checkpoint, args.fit_iterations)
    folder = work / "model_folder"
    if not folder.exists():
        run_measured([str(BIN / "stunet-convert"), str(checkpoint), str(folder)])
    env = command_env(work)
    runs = {
        "nnUNetv2_predict": [str(BIN / "nnUNetv2_predict_from_modelfolder"), "-i", str(image.parent), "-o",
                             str(work / "out_nnunet"), "-m", str(folder), "-f", "all", "--disable_tta",
                             "-device", "cpu", "-npp", "1", "-nps", "1"],
        "stunet-predict": [str(BIN / "stunet-predict"), "-i", str(image.parent), "-o", str(work / "out_stunet"),
                           "-m", str(folder), "-f", "all", "--disable-tta", "--device", "cpu", "--overwrite"],
        "stunet-predict --pretrained": [str(BIN / "stunet-predict"), "-i", str(image.parent), "-o",
                                        str(work / "out_stunet_pretrained"), "--pretrained",
                                        "stunet_small.totalseg104", "--checkpoint", str(checkpoint),
                                        "--disable-tta", "--device", "cpu", "--overwrite"],
    }
    if args.bf16:
        runs["stunet-predict --pretrained --precision bf16"] = [
            *runs["stunet-predict --pretrained"][:4], str(work / "out_stunet_bf16"),
            *runs["stunet-predict --pretrained"][5:], "--precision", "bf16"]
    outputs = {"nnUNetv2_predict": "out_nnunet", "stunet-predict": "out_stunet",
               "stunet-predict --pretrained": "out_stunet_pretrained",
               "stunet-predict --pretrained --precision bf16": "out_stunet_bf16"}
    results = {}
    for name, command in runs.items():
        print(f"running {name} ...", flush=True)
        results[name] = run_measured(command, env, work / f"{name.split()[0]}.log")
        print(f"  {results[name][0]:.1f} s, peak {results[name][1] / 2 ** 30:.2f} GiB", flush=True)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "out_nnunet" / "ct.nii.gz")))
    base_wall, base_rss = results["nnUNetv2_predict"]
    rows = []
    for name, (wall, rss) in results.items():
        out = work / outputs[name] / "ct.nii.gz"
        mean, worst, n = dice_agreement(reference, sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
        rows.append(f"| {name} | {wall:.1f} | {base_wall / wall:.2f}× | {rss / 2 ** 30:.2f} | {rss / base_rss:.2f} | "
                    f"{mean:.4f} (min {worst:.4f}, {n} labels) |")
    table = "\n".join([
        f"Input: 122×101×112 CT at 3 mm (27 tiles of 128³ at 1.5 mm), 105-class STU-Net-S "
        f"({'released' if args.checkpoint else 'fitted'} weights), no mirroring, step 0.5, CPU.",
        f"Machine: {describe()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. "
        f"Command: `python benchmarks/predict.py{' --bf16' if args.bf16 else ''}"
        "`.", "",
        "| command | wall (s) | speed-up | peak RSS (GiB) | RSS ratio | agreement with nnUNetv2_predict (Dice) |",
        "|---|---|---|---|---|---|", *rows])
    print("\n" + table)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(table + "\n")


if __name__ == "__main__":
    main()
