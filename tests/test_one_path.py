"""One path for one case (issue 24, point 1): ``stunet-predict`` and ``stunet.Segmenter`` run the same function
(stunet.prediction.case.predict_case), so a bad image gets the same error class and message through both, and a good
one the same labels, voxel for voxel; an image held in memory gets the same checks as its file."""
from __future__ import annotations

import json
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import stunet
from hostile_helpers import _nifti_with, _write
from predict_helpers import labels_of, make_model_folder, predict, write_image
from stunet.errors import CaseError
from stunet.nnunet.synthetic import make_case


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_path")
    model = make_model_folder(root / "model")
    seg = stunet.Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    return seg, root, model


def _volume(seed: int = 5) -> np.ndarray:
    return make_case(np.random.default_rng(seed), (10, 24, 20), 1)[0][0].astype(np.float32)


def _bad_files(folder):
    """name -> (file, a few words the message must hold, extra command-line options)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = _volume()
    cases = {}
    nan = volume.copy()
    nan[:] = np.nan
    nib.save(nib.Nifti1Image(nan.transpose(2, 1, 0), np.diag([0.8, 0.8, 3.0, 1])), folder / "nan.nii.gz")
    cases["all_nan"] = (folder / "nan.nii.gz", "no finite voxel", [])  # ITK alone would read it as zeros
    inf = volume.copy()
    inf[:] = np.inf
    nib.save(nib.Nifti1Image(inf.transpose(2, 1, 0), np.diag([0.8, 0.8, 3.0, 1])), folder / "inf.nii.gz")
    cases["all_inf"] = (folder / "inf.nii.gz", "no finite voxel", [])
    four = np.stack([volume, volume], -1).transpose(2, 1, 0, 3)
    nib.save(nib.Nifti1Image(four, np.diag([0.8, 0.8, 3.0, 1])), folder / "four_d.nii.gz")
    cases["4d"] = (folder / "four_d.nii.gz", "a 4D image", [])
    rgb = np.zeros(volume.shape[::-1], dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = (volume.transpose(2, 1, 0) > 0) * 200
    nib.save(nib.Nifti1Image(rgb, np.diag([0.8, 0.8, 3.0, 1])), folder / "rgb.nii.gz")
    cases["rgb"] = (folder / "rgb.nii.gz", "3 components per voxel", [])
    plain = _write(sitk.GetImageFromArray(volume), folder / "plain_source.nii")
    cases["zero_spacing"] = (_nifti_with(folder / "zero.nii", plain, pixdim=(0.0, 1.0, 2.0)),
                             "not finite and positive", [])
    big = sitk.GetImageFromArray(volume)
    big.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(big, str(folder / "big.nii.gz"))
    cases["over_budget"] = (folder / "big.nii.gz", "over the budget", ["--max-voxels", "5000"])
    return cases


BAD = ["all_nan", "all_inf", "4d", "rgb", "zero_spacing", "over_budget"]


def _api(seg, options: list[str]):
    """A Segmenter on the same loaded model with the voxel budget the command's options set."""
    return stunet.Segmenter(model=seg.model, device="cpu", mirroring=False,
                            max_voxels=float(options[1]) if options else None)


@pytest.fixture(scope="module")
def bad(setup):
    return _bad_files(setup[1] / "bad")


@pytest.mark.parametrize("name", BAD)
def test_a_bad_image_gets_the_same_error_through_the_command_and_the_api(setup, bad, name):
    seg, root, model = setup
    path, words, options = bad[name]
    api = _api(seg, options)
    with pytest.raises(CaseError) as raised:
        api(path)
    message = str(raised.value)
    assert words in message and str(path) in message and "\n" not in message
    out = root / f"out_{name}"
    done = predict("-i", path, "-o", out, "-m", model, "--disable-tta", *options, check=False)
    assert done.returncode == 1
    assert f"stunet-predict: error: {message}" in done.stderr.splitlines()
    assert not list(out.glob("*.nii.gz"))
    record = json.loads((out / "provenance.json").read_text())
    assert record["cases"][path.name.split(".")[0]] == {"status": "failed", "error": message}


@pytest.mark.parametrize("name", ["all_nan", "4d", "rgb", "over_budget"])
def test_the_same_image_in_memory_gets_the_same_check(setup, bad, name):
    """A nibabel image of the file: the same error class, and the message says the same after naming the input."""
    seg, _, _ = setup
    path, words, options = bad[name]
    api = _api(seg, options)
    with pytest.raises(CaseError) as from_file:
        api(path)
    with pytest.raises(CaseError) as from_memory:
        api(nib.load(str(path)))
    assert str(from_memory.value).startswith("the image: ")
    assert str(from_memory.value).split(": ", 1)[1] == str(from_file.value).split(": ", 1)[1]


def test_numpy_arrays_are_checked_like_files(setup):
    seg, _, _ = setup
    volume = _volume()
    with pytest.raises(CaseError, match="spacing"):
        seg(volume)  # no geometry
    with pytest.raises(CaseError, match="has 2 values"):
        seg(volume, spacing=(1.0, 1.0))
    with pytest.raises(CaseError, match="4x4"):
        seg(volume, affine=np.eye(3))
    with pytest.raises(CaseError, match="empty image"):
        seg(np.zeros((0, 4, 4), np.float32), spacing=(1, 1, 1))
    with pytest.raises(CaseError, match="not finite and positive"):
        seg(volume, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(CaseError, match="a 2D image"):
        seg(volume[0], spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CaseError, match="complex"):
        seg(volume.astype(np.complex64), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CaseError, match="no finite voxel"):
        seg(np.full_like(volume, np.nan), spacing=(1.0, 1.0, 1.0))


def test_a_good_image_gets_the_same_labels_and_notes_through_both(setup):
    """One NaN and one inf voxel are repaired (documented) alike: the same labels, the repair warned by the API and
    recorded by the command."""
    seg, root, model = setup
    volume = _volume(7)
    volume[3, 5, 6], volume[4, 10, 2] = np.nan, np.inf
    folder = root / "good"
    folder.mkdir()
    write_image(folder / "c_0000.nii.gz", volume, seed=3)
    done = predict("-i", folder, "-o", root / "good_out", "-m", model, "--disable-tta")
    cli = labels_of(root / "good_out" / "c.nii.gz")
    assert "2 NaN or infinite voxel(s) replaced" in done.stderr
    record = json.loads((root / "good_out" / "provenance.json").read_text())
    assert record["cases"]["c"]["status"] == "predicted"
    assert any("2 NaN or infinite voxel(s) replaced" in n for n in record["cases"]["c"]["notes"])
    with pytest.warns(UserWarning, match="2 NaN or infinite voxel"):
        from_path = seg(folder / "c_0000.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_path), cli)
    with pytest.warns(UserWarning, match="2 NaN or infinite voxel"):  # nibabel keeps the NaN (ITK reads 0 there)
        from_image = seg(nib.load(str(folder / "c_0000.nii.gz")))
    np.testing.assert_array_equal(np.asarray(from_image.dataobj), cli.transpose(2, 1, 0))


def test_calls_are_serialised(setup, bad, monkeypatch):
    """Three threads share one Segmenter: at no moment do two cases run at once, and each gets the result of one alone.
    Without the Segmenter's lock the instrumented phase sees several callers at once and this fails."""
    seg, root, _ = setup
    image = sitk.ReadImage(str(root / "bad" / "big.nii.gz"))
    expected = sitk.GetArrayFromImage(seg(image))
    inside, most = [0], [0]
    original = seg.predictor.predict

    def instrumented(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.2)  # room for another thread to come in, were it let in
        try:
            return original(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(seg.predictor, "predict", instrumented)
    results = [None] * 3

    def work(i):
        results[i] = sitk.GetArrayFromImage(seg(image))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_work_that_leaves_the_gpu_is_said_once_and_recorded(setup, bad, monkeypatch):
    """A CUDA out-of-memory that moves work to the CPU is one warning line and a note of the case (the provenance)."""
    seg, root, _ = setup
    image = sitk.ReadImage(str(root / "bad" / "big.nii.gz"))
    original = seg.predictor.predict

    def running_out(*args, **kwargs):
        seg.predictor.note_fallback("the blending canvas")  # what the canvas allocation does on OutOfMemoryError
        return original(*args, **kwargs)

    monkeypatch.setattr(seg.predictor, "predict", running_out)
    with pytest.warns(UserWarning, match="did not fit in the memory of cpu; it was computed on the CPU") as caught:
        seg(image)
    assert len([w for w in caught if "did not fit" in str(w.message)]) == 1
    assert any("the blending canvas did not fit" in n for n in seg.last.notes)
    monkeypatch.undo()
    seg(image)  # the next case starts without it
    assert not any("did not fit" in n for n in seg.last.notes)
