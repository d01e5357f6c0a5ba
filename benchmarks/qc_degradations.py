"""Does ``stunet-predict --qc`` notice a degraded input? Each case of a fresh synthetic cohort (the demo's
distribution, :mod:`stunet.nnunet.synthetic`, other seeds than the training cases) is segmented clean and degraded in
five documented ways, with the quality fields of :mod:`stunet.clinical.quality`; the table says how many cases each
rule flags.

Degradations, each of the case's image array (z, y, x), its header kept:

- ``inverted``: intensities mirrored within their range (max + min - value);
- ``noise``: Gaussian noise of one standard deviation of the image added;
- ``truncated``: the field of view cut along x through the ball's centre (the image ends there);
- ``mr_range``: the intensities rescaled linearly to 0-1000, an MR-like range (the network's z-score normalisation
  makes this invisible to it);
- ``transposed``: the z and x axes swapped, the spacing left as it was (a wrong orientation).

Usage: ``python benchmarks/qc_degradations.py MODEL_FOLDER [--cases 12] [--tta] [--markdown OUT.md]``; MODEL_FOLDER is a
trained nnU-Net model folder of the synthetic dataset, e.g. the one ``stunet-demo`` trains
(``WORKDIR/nnUNet_results/Dataset990_STUNetSynthetic/STUNetTrainer_small_quick__nnUNetPlans__3d_fullres``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DEGRADATIONS = ("inverted", "noise", "truncated", "mr_range", "transposed")
RULES = ("low confidence (", "uncertain", "fragmented", "low confidence over the case", "cut by the image border",
         "intensities unlike training")


def degrade(array: np.ndarray, labels: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "inverted":
        return array.max() + array.min() - array
    if kind == "noise":
        return array + rng.normal(0, array.std(), array.shape).astype(np.float32)
    if kind == "truncated":
        centre = int(round(np.argwhere(labels == 1)[:, 2].mean()))
        return array[:, :, :max(centre, 1)]
    if kind == "mr_range":
        return (array - array.min()) / (array.max() - array.min()) * 1000.0
    if kind == "transposed":
        return np.ascontiguousarray(array.transpose(2, 1, 0))
    raise ValueError(kind)


def as_image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    return image


def measure(model: Path, cases: int, seed: int = 1, mirroring: bool = False) -> dict[str, list[dict]]:
    """Variant ("clean" and each degradation) -> per case the QC entries of its labels (name -> fields); without
    ``mirroring`` (as ``stunet-predict --disable-tta``), to keep the run to minutes on a CPU."""
    from stunet.nnunet.synthetic import write_dataset
    from stunet.prediction.segmenter import Segmenter

    segmenter = Segmenter(model_folder=model, device="cpu", mirroring=mirroring)
    rng = np.random.default_rng(seed)
    results: dict[str, list[dict]] = {v: [] for v in ("clean", *DEGRADATIONS)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_dataset(tmp, num_train=0, num_test=cases, seed=seed)
        for path in sorted((folder / "imagesTs").glob("*_0000.nii.gz")):
            image = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(image).astype(np.float32)
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTs" / path.name.replace("_0000", ""))))
            for variant in results:
                data = array if variant == "clean" else degrade(array, labels, variant, rng)
                result = segmenter.predict(as_image(data, image), warn=False, qc=True, keep_image=True)
                results[variant].append(result.quality)
            print(f"{path.name}: done", file=sys.stderr, flush=True)
    return results


def reflag(results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The same fields flagged by the current rules (:func:`stunet.clinical.quality.flag`)."""
    from stunet.clinical.quality import flag

    nan = float("nan")
    return {variant: [{name: {**e, "flag": flag(*(nan if e[f] is None else e[f] for f in (
        "confidence", "uncertain_fraction", "components", "largest_component_fraction", "case_confidence",
        "border_section", "outside_intensity_fraction")))} for name, e in case.items()} for case in cases]
            for variant, cases in results.items()}


def table(results: dict[str, list[dict]]) -> str:
    results = reflag(results)
    lines = ["| input | cases flagged | mean confidence | case confidence | border section (max) | outside "
             "intensities (mean) | rules that fired (cases) |", "|---|---|---|---|---|---|---|"]
    for variant, cases in results.items():
        flagged = sum(any(entry["flag"] for entry in case.values()) for case in cases)
        present = [e for case in cases for e in case.values() if e["components"]]

        def mean(field, entries=present):
            values = [e[field] for e in entries if e[field] == e[field]]
            return f"{np.mean(values):.3f}" if values else ""
        borders = [max((e["border_section"] for e in case.values() if e["components"]), default=0.0) for case in cases]
        fired = {rule: sum(any(rule in e["flag"] for e in case.values()) for case in cases) for rule in RULES}
        rules = ", ".join(f"{rule.rstrip(' (')} {n}" for rule, n in fired.items() if n) or "none"
        lines.append(f"| {variant} | {flagged}/{len(cases)} | {mean('confidence')} | {mean('case_confidence')} | "
                     f"{np.mean(borders):.2f} | {mean('outside_intensity_fraction')} | {rules} |")
    degraded = [sum(any(e["flag"] for e in results[v][i].values()) for v in DEGRADATIONS)
                for i in range(len(results["clean"]))]
    lines.append("")
    lines.append(f"Degradations flagged per case: {np.mean(degraded):.2f} of {len(DEGRADATIONS)} on average; clean "
                 f"cases flagged: {sum(any(e['flag'] for e in c.values()) for c in results['clean'])} of "
                 f"{len(results['clean'])}.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a trained model folder of the synthetic dataset")
    parser.add_argument("--cases", type=int, default=12, help="clean cases (default 12)")
    parser.add_argument("--tta", action="store_true", help="mirroring on (8 times the work)")
    parser.add_argument("--markdown", type=Path, help="also write the table there")
    parser.add_argument("--json", type=Path, help="also write the measured fields there")
    parser.add_argument("--from-json", action="store_true",
                        help="MODEL is such a JSON file: flag its fields with the current rules, segment nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.model.read_text())
    else:
        results = measure(args.model, args.cases, mirroring=args.tta)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    text = table(results)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
