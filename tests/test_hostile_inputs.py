"""Hostile inputs, round 2 (issue 25), on the one prediction path: images the model cannot read, implausible
spacings, thin images, file names that are not UTF-8 or hold a line break, upper-case endings, and what is planted in
an output folder. Each bad case ends in its one line, writes nothing, is listed as failed in provenance.json, and the
valid cases of the same run are still predicted; the Python API refuses the same images with the same messages."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import stunet
from predict_helpers import make_model_folder, predict, write_image
from stunet.errors import CaseError
from stunet.nnunet.synthetic import make_case

AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def _volume(seed: int = 1, shape=(14, 40, 36)) -> np.ndarray:
    return make_case(np.random.default_rng(seed), shape, 1)[0][0].astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("hostile2") / "model")


def _bad_folder(folder: Path) -> dict[str, str]:
    """Valid and bad cases in one folder: case name -> the words of its error (None: predicted)."""
    folder.mkdir(parents=True)
    volume = _volume()
    expected = {}
    write_image(folder / "good_0000.nii.gz", volume)
    expected["good"] = None
    write_image(folder / "tmp_upper.nii.gz", volume)
    (folder / "tmp_upper.nii.gz").rename(folder / "UPPER_0000.NII.GZ")  # ITK itself refuses such a name
    expected["UPPER"] = None
    nib.save(nib.Nifti1Image(volume.T.astype(np.complex64), AFFINE), folder / "complex_0000.nii")
    expected["complex"] = "complex-valued voxels"
    rgb = np.zeros(volume.T.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), folder / "rgb_0000.nii.gz")
    expected["rgb"] = "3 components per voxel"
    vector = sitk.Compose([sitk.GetImageFromArray(volume)] * 2)
    sitk.WriteImage(vector, str(folder / "vector_0000.mha"))
    expected["vector"] = "2 components per voxel"
    nib.save(nib.Nifti1Image(volume.T, np.diag([1e-30, 1e-30, 1e-30, 1.0])), folder / "tiny_0000.nii.gz")
    expected["tiny"] = "outside the plausible 0.01-50 mm"
    flat = np.zeros((1, 24, 24), np.float32)
    flat[0, 5:9, 5:9] = 100
    image = sitk.GetImageFromArray(flat)
    image.SetSpacing((1e5, 1e5, 1e5))
    sitk.WriteImage(image, str(folder / "flat_0000.nii.gz"))
    expected["flat"] = "outside the plausible 0.01-50 mm"
    return expected


def test_each_unreadable_or_implausible_image_fails_alone(model, tmp_path):
    expected = _bad_folder(tmp_path / "in")
    out = tmp_path / "out"
    start = time.perf_counter()
    done = predict("-i", tmp_path / "in", "-o", out, "-m", model, "--disable-tta", check=False)
    assert time.perf_counter() - start < 180
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    record = json.loads((out / "provenance.json").read_text())["cases"]
    for name, words in expected.items():
        if words is None:
            assert (out / f"{name}.nii.gz").is_file(), done.stderr[-2000:]
            assert record[name]["status"] == "predicted"
            continue
        errors = [line for line in lines if line.startswith("stunet-predict: error: ") and f"/{name}_0000" in line]
        assert len(errors) == 1 and words in errors[0], (name, errors, done.stderr[-2000:])
        assert record[name] == {"status": "failed", "error": errors[0][len("stunet-predict: error: "):]}
        assert not list(out.glob(f"{name}.*"))
    assert not (out / ".stunet-partial").exists()
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["complex", "rgb", "vector", "tiny", "flat"])
def test_the_api_refuses_them_with_the_same_message(model, tmp_path, name):
    expected = _bad_folder(tmp_path / "in")
    path = next((tmp_path / "in").glob(f"{name}_0000.*"))
    seg = stunet.Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    with pytest.raises(CaseError, match=expected[name]) as raised:
        seg(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_names_that_are_not_utf8_or_hold_a_line_break(model, tmp_path):
    """Read through a path that works and predicted; the log gets no forged line and the outputs keep the names."""
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9_0000.nii.gz")
    write_image(folder / "plain_0000.nii.gz", _volume(2))
    (folder / "plain_0000.nii.gz").rename(folder / odd)
    write_image(folder / "two\nlines_0000.nii.gz", _volume(3))
    out = tmp_path / "out"
    done = predict("-i", folder, "-o", out, "-m", model, "--disable-tta")
    assert (out / os.fsdecode(b"caf\xe9.nii.gz")).is_file()
    assert (out / "two\nlines.nii.gz").is_file()  # the channel suffix is still recognised
    assert not any(line.startswith("lines") for line in done.stderr.splitlines())
    record = json.loads((out / "provenance.json").read_text())["cases"]
    assert {v["status"] for v in record.values()} == {"predicted"} and len(record) == 2


def test_what_is_planted_in_the_output_folder(model, tmp_path):
    """A claim file that is a folder fails its case alone; a .stunet-partial that is a link is never written through."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a_0000.nii.gz", _volume(4))
    write_image(folder / "b_0000.nii.gz", _volume(5))
    out = tmp_path / "out"
    (out / ".stunet-partial" / "a.nii.gz.lock").mkdir(parents=True)
    done = predict("-i", folder, "-o", out, "-m", model, "--disable-tta", check=False)
    assert done.returncode == 1 and (out / "b.nii.gz").is_file() and not (out / "a.nii.gz").exists()
    assert any("a.nii.gz.lock: a folder where this case's claim file belongs" in line
               for line in done.stderr.splitlines())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for target in (elsewhere, tmp_path / "dangling"):
        linked = tmp_path / f"out_{target.name}"
        linked.mkdir()
        (linked / ".stunet-partial").symlink_to(target)
        done = predict("-i", folder, "-o", linked, "-m", model, "--disable-tta", check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "a symbolic link where stunet keeps unfinished files" in done.stderr
        assert not list(linked.glob("*.nii.gz"))
        assert (linked / ".stunet-partial").is_symlink()
    assert not list(elsewhere.iterdir())


def test_the_budget_counts_the_padding_of_thin_images(model):
    """A thin image pads to whole tiles: the padded grid is what the budget and the memory estimate count."""
    from stunet.prediction.budget import VoxelBudget
    from stunet.prediction.model import load_model_folder

    loaded = load_model_folder(model)
    budget = VoxelBudget.for_model(loaded, limit=100_000)
    with pytest.raises(CaseError, match="padded to the patch size"):
        budget.check("thin.nii.gz", (2, 2, 10000), (1.5, 1.5, 1.5))  # 40,000 voxels; 10,000 x 32 x 32 once padded
    memory = budget.memory
    assert memory.padded([6667, 1, 1]) == [6667, 32, 32]
    assert memory.estimate([10000, 2, 2], [6667, 1, 1]) > 6667 * 32 * 32 * 4


def test_headers_that_point_outside_their_folder_are_refused(model, tmp_path):
    """A NRRD 'data file:' or a MetaImage ElementDataFile outside the header's folder would read another file."""
    from stunet.prediction.checks import check_files

    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(24 * 24 * 8 * 2))
    folder = tmp_path / "in"
    folder.mkdir()
    headers = {
        "nrrd_0000.nrrd": "NRRD0004\ntype: short\ndimension: 3\nsizes: 24 24 8\nspacings: 1 1 1\nencoding: raw\n"
                          "data file: ../secret.raw\n\n",
        "absolute_0000.nrrd": "NRRD0004\ntype: short\ndimension: 3\nsizes: 24 24 8\nspacings: 1 1 1\n"
                              f"encoding: raw\ndata file: {secret}\n\n",
        "list_0000.nrrd": "NRRD0004\ntype: short\ndimension: 3\nsizes: 24 24 8\nspacings: 1 1 1\nencoding: raw\n"
                          "data file: LIST\nok.raw\n../secret.raw\n",
        "meta_0000.mhd": "ObjectType = Image\nNDims = 3\nDimSize = 24 24 8\nElementSpacing = 1 1 1\n"
                         "ElementType = MET_SHORT\nElementDataFile = ../secret.raw\n",
    }
    for name, text in headers.items():
        (folder / name).write_text(text)
        with pytest.raises(CaseError, match="outside the header's folder"):
            check_files([folder / name])
    write_image(folder / "good_0000.nii.gz", _volume(6))
    done = predict("-i", folder, "-o", tmp_path / "out", "-m", model, "--disable-tta", check=False)
    assert done.returncode == 1 and (tmp_path / "out" / "good.nii.gz").is_file()
    assert sum("outside the header's folder" in line for line in done.stderr.splitlines()) == 4 * 2  # + summary


def test_disagreeing_qform_and_sform_are_recorded(model, tmp_path):
    """Decided: the image is placed as ITK reads it (here: by the scanner-coded qform); the disagreement and which form ITK followed are noted."""
    folder = tmp_path / "in"
    folder.mkdir()
    image = nib.Nifti1Image(_volume(8).T, None)
    image.set_qform(np.diag([0.8, 0.8, 3.0, 1.0]), code=1)
    shifted = np.diag([0.8, 0.8, 3.0, 1.0])
    shifted[:3, 3] = [12.0, -4.0, 30.0]
    image.set_sform(shifted, code=2)
    nib.save(image, folder / "forms_0000.nii.gz")
    out = tmp_path / "out"
    done = predict("-i", folder, "-o", out, "-m", model, "--disable-tta")
    assert "qform and sform place the image up to" in done.stderr and "follows the qform" in done.stderr, done.stderr
    notes = json.loads((out / "provenance.json").read_text())["cases"]["forms"]["notes"]
    assert any("follows the qform" in n for n in notes)
    written = sitk.ReadImage(str(out / "forms.nii.gz"))
    assert np.allclose(written.GetOrigin(), sitk.ReadImage(str(folder / "forms_0000.nii.gz")).GetOrigin())
