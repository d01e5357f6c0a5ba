"""stunet-predict: geometry, agreement with nnU-Net's predictor, label subsets and maps, parts, resume, failures."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_helpers import assert_same_geometry
from predict_helpers import dice_per_label, labels_of, make_model_folder, predict, write_cases


@pytest.fixture(scope="module")
def predicted(model_folder, tmp_path_factory):
    """Three oblique anisotropic cases predicted once (with mirroring) with probabilities."""
    root = tmp_path_factory.mktemp("cases")
    names = write_cases(root / "in", 3)
    done = predict("-i", root / "in", "-o", root / "out", "-m", model_folder, "--save-probabilities")
    (root / "stderr.txt").write_text(done.stderr)
    return root, names


def test_each_case_reports_its_phases(predicted):
    root, names = predicted
    text = (root / "stderr.txt").read_text().replace("\r", "\n")
    for name in names:
        assert re.search(rf"^{name}: read [\d.]+ s, preprocess [\d.]+ s, network [\d.]+ s, export [\d.]+ s, "
                         rf"writing [\d.]+ s \(\d+ tiles\)$", text, re.MULTILINE), text[-2000:]


def test_outputs_keep_the_input_geometry(predicted):
    root, names = predicted
    for name in names:
        assert_same_geometry(root / "out" / f"{name}.nii.gz", root / "in" / f"{name}_0000.nii.gz")
        assert sitk.ReadImage(str(root / "out" / f"{name}.nii.gz")).GetPixelID() == sitk.sitkUInt8
    assert json.loads((root / "out" / "labels.json").read_text())["3"] == "kidney_left"
    assert not (root / "out" / ".stunet-partial").exists()


def test_agrees_with_nnunets_predictor(model_folder, predicted):
    """Blending features instead of logits gives nnU-Net's segmentation (its logits are accumulated in fp16): per-label
    Dice, every foreground label present in either map."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    root, names = predicted
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=True, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,))
    out = root / "nnunet"
    predictor.predict_from_files([[str(root / "in" / f"{n}_0000.nii.gz")] for n in names],
                                 [str(out / n) for n in names], save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)
    for name in names:
        ours, theirs = labels_of(root / "out" / f"{name}.nii.gz"), labels_of(out / f"{name}.nii.gz")
        dice = dice_per_label(ours, theirs)
        assert sorted(dice) == [1, 2, 3, 4], dice  # every class covers 2,400-7,100 of the 20,160 voxels
        # measured: at least 0.9994 per label (up to 3 voxels of a 2,500-voxel label differ: near ties)
        assert min(dice.values()) >= 0.998, dice


def test_probabilities_match_the_label_map(predicted):
    root, names = predicted
    npz = np.load(root / "out" / f"{names[0]}.npz")
    seg = labels_of(root / "out" / f"{names[0]}.nii.gz")
    assert npz["probabilities"].shape == (5, *seg.shape) and list(npz["labels"])[3] == "kidney_left"
    dice = dice_per_label(npz["probabilities"].astype(np.float32).argmax(0), seg)
    assert sorted(dice) == [1, 2, 3, 4] and min(dice.values()) >= 0.998, dice  # float16 ties: measured >= 0.9997


def test_label_subset_and_downstream_map(model_folder, predicted, tmp_path):
    """On one of the predicted cases (each run predicts it again, with mirroring)."""
    root, names = predicted
    full = labels_of(root / "out" / f"{names[0]}.nii.gz")
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(root / "in" / f"{names[0]}_0000.nii.gz", one)
    predict("-i", one, "-o", tmp_path / "subset", "-m", model_folder, "--labels", "Spleen,kidney_left")
    subset = labels_of(tmp_path / "subset" / f"{names[0]}.nii.gz")
    np.testing.assert_array_equal(subset, np.where(np.isin(full, [2, 3]), full, 0))
    predict("-i", one, "-o", tmp_path / "mapped", "-m", model_folder, "--label-map", "kidneys_merged")
    mapped = labels_of(tmp_path / "mapped" / f"{names[0]}.nii.gz")
    np.testing.assert_array_equal(mapped, np.isin(full, [3, 4]).astype(np.uint8))
    assert json.loads((tmp_path / "mapped" / "labels.json").read_text()) == {"0": "background", "1": "kidney"}
    custom = tmp_path / "organs.json"
    custom.write_text(json.dumps({"labels": {"1": {"name": "Spleen", "from": ["spleen"]},
                                             "2": {"name": "abdomen", "from": ["liver", "kidney_left"]}}}))
    predict("-i", one, "-o", tmp_path / "custom", "-m", model_folder, "--label-map", custom)
    np.testing.assert_array_equal(labels_of(tmp_path / "custom" / f"{names[0]}.nii.gz"),
                                  np.select([full == 2, np.isin(full, [1, 3])], [1, 2], 0))
    done = predict("-i", one, "-o", tmp_path / "x", "-m", model_folder, "--labels", "pancreas", check=False)
    assert done.returncode == 1 and "pancreas not among the output labels" in done.stderr


def test_parts_resume_and_overwrite(model_folder, predicted, tmp_path):
    root, names = predicted
    out = tmp_path / "out"
    predict("-i", root / "in", "-o", out, "-m", model_folder, "--num-parts", "2", "--part-id", "1", "--disable-tta")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{names[1]}.nii.gz"]
    predict("-i", root / "in", "-o", out, "-m", model_folder, "--num-parts", "2", "--part-id", "0", "--disable-tta")
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{n}.nii.gz" for n in names)
    first = out / f"{names[0]}.nii.gz"
    os.utime(first, (1, 1))
    done = predict("-i", root / "in", "-o", out, "-m", model_folder, "--disable-tta")
    assert "0 predicted, 3 skipped" in done.stderr and first.stat().st_mtime == 1
    predict("-i", root / "in", "-o", out, "-m", model_folder, "--disable-tta", "--overwrite")
    assert first.stat().st_mtime > 1


def test_single_file_in_and_out(model_folder, predicted, tmp_path):
    root, names = predicted
    source = root / "in" / f"{names[2]}_0000.nii.gz"
    predict("-i", source, "-o", tmp_path / "seg.nii.gz", "-m", model_folder)
    np.testing.assert_array_equal(labels_of(tmp_path / "seg.nii.gz"), labels_of(root / "out" / f"{names[2]}.nii.gz"))


def test_metaimage_output_keeps_its_data_file(model_folder, predicted, tmp_path):
    """A .mhd case gives a .mhd output whose header names its data file by the final name, with the input's geometry
    and the .nii.gz run's labels; nothing else is left in the output folder but the run's provenance.json. Also for
    one file in and out."""
    root, names = predicted
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / f"{names[1]}_0000.mhd"
    sitk.WriteImage(sitk.ReadImage(str(root / "in" / f"{names[1]}_0000.nii.gz")), str(source))
    predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model_folder)
    predict("-i", source, "-o", tmp_path / "single" / "seg.mhd", "-m", model_folder)
    expected = labels_of(root / "out" / f"{names[1]}.nii.gz")
    for folder, stem in ((tmp_path / "out", names[1]), (tmp_path / "single", "seg")):
        header = folder / f"{stem}.mhd"
        data_file = next(line.split("=")[1].strip() for line in header.read_text().splitlines()
                         if line.startswith("ElementDataFile"))
        assert data_file in (f"{stem}.zraw", f"{stem}.raw")
        assert sorted(p.name for p in folder.iterdir()) == sorted([header.name, data_file, "labels.json",
                                                                   "provenance.json"])
        assert_same_geometry(header, source)
        np.testing.assert_array_equal(labels_of(header), expected)


def test_atomic_write_moves_data_files_before_the_header(tmp_path, monkeypatch):
    """A header appears only after its data file, under the final names; the temporary folder is left empty."""
    from stunet import atomic

    moved = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (moved.append(os.path.basename(b)), real_replace(a, b)))
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    partial = tmp_path / "out" / ".partial"
    atomic.atomic_write(tmp_path / "out" / "seg.mhd", lambda tmp: sitk.WriteImage(image, str(tmp), True), partial)
    assert moved == ["seg.zraw", "seg.mhd"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".partial", "seg.mhd", "seg.zraw"]
    assert list(partial.iterdir()) == []
    np.testing.assert_array_equal(labels_of(tmp_path / "out" / "seg.mhd"), sitk.GetArrayFromImage(image))
    with pytest.raises(FileNotFoundError, match="produced no file other.nii.gz"):
        atomic.atomic_write(tmp_path / "out" / "other.nii.gz", lambda tmp: None, partial)
    assert list(partial.iterdir()) == []


def test_wrong_number_of_channel_files(tmp_path):
    two_channels = make_model_folder(tmp_path / "model2ch", channels=2)
    write_cases(tmp_path / "in", 2, channels=2)
    (tmp_path / "in" / "case1_0001.nii.gz").unlink()
    done = predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", two_channels, "--disable-tta", check=False)
    assert done.returncode == 1 and "1 predicted" in done.stderr
    assert "case1_0000.nii.gz: the model takes 2 channel file(s) (case1_0000, case1_0001); found case1_0000" in \
        done.stderr


def test_refuses_to_write_into_the_input_folder(model_folder, predicted):
    root, _ = predicted
    done = predict("-i", root / "in", "-o", root / "in", "-m", model_folder, check=False)
    assert done.returncode == 2 and "is the input folder" in done.stderr


def test_interrupted_write_leaves_no_output(model_folder, predicted, tmp_path, monkeypatch):
    """A crash while writing (here: the writer dies half-way) leaves neither the output nor a visible temp file."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from stunet.cli import predict as cli

    root, names = predicted

    def dying_write(self, seg, path, properties):
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(SimpleITKIO, "write_seg", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["-i", str(root / "in"), "-o", str(tmp_path / "out"), "-m", str(model_folder), "--disable-tta"])
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "labels.json"]
    assert leftovers == []


def test_bf16_precision_runs_the_network_in_bfloat16(model_folder):
    """--precision bf16 (for CPUs with native bfloat16, and GPUs): the convolutions run in bfloat16 under autocast and
    the blended features stay close to float32's. One tile, no mirroring: bfloat16 is emulated, and slow, here."""
    from stunet.prediction.sliding_window import Predictor
    from stunet.prediction.model import load_model_folder

    loaded = load_model_folder(model_folder)
    dtypes = []
    loaded.networks[0].conv_blocks_context[0][0].conv1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    data = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = Predictor(loaded, "cpu", mirroring=False, precision="fp32").blended_features(data)[0]
    predictor = Predictor(loaded, "cpu", mirroring=False, precision="bf16")
    bf16 = predictor.blended_features(data)[0]
    assert dtypes[:2] == [torch.float32, torch.bfloat16]
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    if predictor.precision == "bf16":  # bf16 agreed with fp32 on the first tile (the check ran fp32 once more)
        assert dtypes == [torch.float32, torch.bfloat16, torch.float32] and not predictor.fallbacks
        assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    else:  # this CPU's bfloat16 convolutions are off for this network (oneDNN on some AMX CPUs): fp32, said once
        assert predictor.precision == "fp32" and len(predictor.fallbacks) == 1 and "bf16" in predictor.fallbacks[0]
        assert torch.equal(bf16, fp32)


def test_a_reduced_precision_that_disagrees_with_fp32_falls_back_with_a_note(model_folder, monkeypatch):
    """The first tile at bf16 on the CPU is checked against fp32; features beyond rounding (here: made so) switch the
    predictor to fp32 for the rest, with one note of the case, and the result is fp32's."""
    from stunet.prediction import sliding_window
    from stunet.prediction.model import load_model_folder
    from stunet.prediction.sliding_window import Predictor

    loaded = load_model_folder(model_folder)
    data = torch.randn(1, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = Predictor(loaded, "cpu", mirroring=False, precision="fp32").blended_features(data)[0]
    features = Predictor._features

    def off_in_bf16(self, network, tile):
        out = features(self, network, tile)
        return out * 2 if torch.is_autocast_enabled("cpu") else out
    monkeypatch.setattr(sliding_window.Predictor, "_features", off_in_bf16)
    predictor = Predictor(loaded, "cpu", mirroring=False, precision="bf16")
    assert torch.equal(predictor.blended_features(data)[0], fp32)
    assert predictor.precision == "fp32" and predictor.autocast_dtype is None
    assert len(predictor.fallbacks) == 1 and "beyond rounding" in predictor.fallbacks[0]
