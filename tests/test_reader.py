"""The shared image reader (stunet.io.reader): the header checked before any voxel, the voxels read once, and the
same reader output nnU-Net's SimpleITK reader gives."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from stunet.errors import CaseError
from stunet.io import headers
from stunet.io.json_file import read_json
from stunet.io.reader import ImageFile, read_image
from stunet.prediction.budget import VoxelBudget
from stunet.prediction.checks import open_files
from stunet.prediction.images import files_reader_output

NOT_UTF8 = os.fsdecode(b"caf\xe9")


def _image(array: np.ndarray, spacing=(0.7, 0.8, 2.5)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _float_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(12, 16, 20)).astype(np.float32)


@pytest.mark.parametrize("ending, compress", [(".nii.gz", True), (".nii", False), (".nrrd", True), (".mha", False)])
def test_the_reader_output_is_simpleitkios(tmp_path, ending, compress):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    path = tmp_path / f"case_0000{ending}"
    sitk.WriteImage(_image(_float_volume()), str(path), compress)
    ours, properties, notes = files_reader_output(open_files([path], VoxelBudget()))
    theirs, expected = SimpleITKIO().read_images([str(path)])
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs) and notes == []
    assert properties["sitk_stuff"] == expected["sitk_stuff"]
    assert np.allclose(properties["spacing"], expected["spacing"]) and len(properties["spacing"]) == 3


def test_a_float_nii_gz_is_decompressed_once(tmp_path, monkeypatch):
    """The voxels are decompressed once, by nibabel (counted at gzip's read); ITK reads the header alone (its full
    reader and the streaming size check are never called)."""
    path = tmp_path / "ct_0000.nii.gz"
    sitk.WriteImage(_image(_float_volume()), str(path), True)
    whole = len(gzip.decompress(path.read_bytes()))
    decompressed = []
    real_read = gzip.GzipFile.read

    def counted(self, *args):
        data = real_read(self, *args)
        decompressed.append(len(data))
        return data

    def forbidden(*args, **kwargs):
        raise AssertionError("a second decompression")

    monkeypatch.setattr(gzip.GzipFile, "read", counted)
    monkeypatch.setattr(sitk, "ReadImage", forbidden)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", forbidden)
    monkeypatch.setattr(headers, "_decoded_bytes", forbidden)
    array, _, _ = files_reader_output(open_files([path], VoxelBudget()))
    assert array.shape == (1, 12, 16, 20)
    voxel_bytes = 12 * 16 * 20 * 4
    assert [n for n in decompressed if n > 1024] == [voxel_bytes], decompressed  # the voxels: once
    assert sum(decompressed) <= whole + 1024, (decompressed, whole)  # beside them: the header (nibabel sniffs 1 KiB)


def test_nan_voxels_are_kept_where_itk_reads_zero(tmp_path):
    volume = _float_volume()
    volume[3, 4, 5], volume[6, 7, 8] = np.nan, np.inf
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(_image(volume), str(path))
    image = read_image(path)
    assert np.isnan(image.array[3, 4, 5]) and np.isinf(image.array[6, 7, 8])
    assert np.array_equal(image.array, volume, equal_nan=True)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[3, 4, 5] == 0  # what the reader does not do


def test_broken_files_are_refused_with_their_reason(tmp_path):
    from hostile_helpers import image_corpus

    budget_only = {"absurd_spacing"}  # refused by prediction's budget at the model's spacing, not by the reader
    for name, (path, expected) in image_corpus(tmp_path).items():
        if name in budget_only:
            continue
        with pytest.raises(CaseError) as error:
            read_image(path)
        message = str(error.value)
        expected = "over the limit" if name == "huge_declared" else expected
        assert str(path) in message and expected in message and "\n" not in message, (name, message)


@pytest.mark.parametrize("spacing", [1e-30, 1e30, 0.005, 60.0])
def test_spacings_outside_the_range_are_refused_before_the_voxels(tmp_path, spacing, monkeypatch):
    path = tmp_path / "odd.nrrd"
    sitk.WriteImage(_image(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, spacing)), str(path))
    monkeypatch.setattr(ImageFile, "read", lambda self: pytest.fail("voxels read"))
    with pytest.raises(CaseError, match="outside the plausible 0.01-50 mm"):
        read_image(path)


def test_a_name_itk_cannot_open_is_read_through_a_link(tmp_path):
    scratch = tmp_path / "plain.nii.gz"
    volume = _float_volume()
    sitk.WriteImage(_image(volume), str(scratch))
    for name in (f"{NOT_UTF8}.nii.gz", "CT.NII.GZ"):
        path = tmp_path / name
        os.replace(scratch, path)
        image = read_image(path)
        assert np.array_equal(image.array, volume) and image.spacing == pytest.approx((0.7, 0.8, 2.5))
        scratch = path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CT.NII.GZ"]  # the links' folder is gone


def test_the_json_reader_takes_bounded_regular_files_only(tmp_path):
    good = tmp_path / "a.json"
    good.write_text('{"1": "liver"}')
    assert read_json(good) == {"1": "liver"}
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 1000 + "0]")
    for path, reason in ((fifo, "not a regular file"), (zero, "not a regular file"), (big, "more than the 100"),
                         (tmp_path, "not a regular file")):
        with pytest.raises(ValueError, match=reason):
            read_json(path, max_bytes=100)

