"""One path for one case: ``stunet-predict`` and ``stunet.Segmenter`` run the same function
(stunet.prediction.case.predict_case), so a good image gets the same labels through both, voxel for voxel (a bad one
the same message: tests/test_bad_inputs.py); an image held in memory gets the same checks as its file; calls are
serialised; work that leaves the GPU is said and recorded."""
from __future__ import annotations

import json
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import stunet
from hostile_helpers import SMALL_BUDGET, careless_images
from predict_helpers import labels_of, predict, write_image
from stunet.errors import CaseError
from stunet.nnunet.synthetic import make_case


@pytest.fixture(scope="module")
def setup(model_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("one_path")
    seg = stunet.Segmenter.from_model_folder(model_folder, device="cpu", mirroring=False)
    return seg, root, model_folder


def _volume(seed: int = 5) -> np.ndarray:
    return make_case(np.random.default_rng(seed), (10, 24, 20), 1)[0][0].astype(np.float32)


def _api(seg, name: str):
    """A Segmenter on the same loaded model; "over_budget" gets careless_images' small voxel budget."""
    return stunet.Segmenter(model=seg.model, device="cpu", mirroring=False,
                            max_voxels=SMALL_BUDGET if name == "over_budget" else None)


@pytest.fixture(scope="module")
def small_case(setup):
    """An oblique 10 x 24 x 20 image whose output grid is finer than the network's (the export runs slab by slab)."""
    path = setup[1] / "small" / "c_0000.nii.gz"
    path.parent.mkdir()
    write_image(path, _volume(7))
    return path


@pytest.fixture(scope="module")
def bad(setup):
    return careless_images(setup[1] / "bad")


@pytest.mark.parametrize("name", ["all_nan", "four_d", "red", "over_budget"])
def test_the_same_image_in_memory_gets_the_same_check(setup, bad, name):
    """A nibabel image of the file: the same error class, and the message says the same after naming the input."""
    seg, _, _ = setup
    path, _ = bad[name]
    api = _api(seg, name)
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


def test_calls_are_serialised(setup, small_case, monkeypatch):
    """Three threads share one Segmenter: at no moment do two cases run at once, and each gets the result of one alone.
    Without the Segmenter's lock the instrumented phase sees several callers at once and this fails."""
    seg, _, _ = setup
    image = sitk.ReadImage(str(small_case))
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


class _OutOfMemory:
    """``torch`` as one module sees it, except that ``allocation`` (torch.zeros, torch.empty) called by the function
    ``inside`` on a given device raises what torch.cuda raises when the GPU is full (torch.OutOfMemoryError); without
    a device (the CPU's), or called elsewhere, it allocates."""

    def __init__(self, allocation: str, inside: str):
        self.allocation, self.inside = allocation, inside

    def __getattr__(self, name):
        allocate = getattr(torch, name)
        if name != self.allocation:
            return allocate

        def full(*args, **kwargs):
            if "device" in kwargs and sys._getframe(1).f_code.co_name == self.inside:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return allocate(*args, **kwargs)
        return full


def test_work_that_leaves_the_gpu_is_said_once_and_recorded(setup, small_case, monkeypatch):
    """Out of memory when the sliding window allocates its blending canvas and when the export allocates its label
    grid: the except branches of stunet.prediction.sliding_window and stunet.prediction.export run, each says so in
    one warning and a note of the case, the labels are those of a run with room, and the next case starts without
    the notes."""
    from stunet.prediction import export, sliding_window

    seg, _, _ = setup
    path = small_case
    expected = sitk.GetArrayFromImage(seg(path))
    monkeypatch.setattr(sliding_window, "torch", _OutOfMemory("zeros", "feature_slabs"))
    monkeypatch.setattr(export, "torch", _OutOfMemory("empty", "fine_labels"))
    with pytest.warns(UserWarning, match="did not fit in the memory of cpu; it was computed on the CPU") as caught:
        labels = sitk.GetArrayFromImage(seg(path))
    for what in ("the blending canvas", "the export"):
        warned = [str(w.message) for w in caught]
        assert len([w for w in warned if f"{what} did not fit" in w]) == 1, warned
        assert len([n for n in seg.last.notes if f"{what} did not fit" in n]) == 1, seg.last.notes
    np.testing.assert_array_equal(labels, expected)
    monkeypatch.undo()
    seg(path)  # the next case starts without them
    assert not any("did not fit" in n for n in seg.last.notes)
