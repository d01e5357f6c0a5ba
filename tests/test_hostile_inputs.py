"""Hostile inputs on the one prediction path: file names that are not UTF-8 or hold a line break, what is planted in an
output folder, thin images, headers that point outside their folder and NIfTI forms that disagree. The bad images of
one run, each failing alone, are tests/test_bad_inputs.py's corpus."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from hostile_helpers import escaping_headers, synthetic_volume
from predict_helpers import predict, write_image
from stunet.errors import CaseError

def test_names_that_are_not_utf8_or_hold_a_line_break(model_folder, tmp_path):
    """Read through a path that works and predicted; the log gets no forged line and the outputs keep the names."""
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9_0000.nii.gz")
    write_image(folder / "plain_0000.nii.gz", synthetic_volume(2))
    (folder / "plain_0000.nii.gz").rename(folder / odd)
    write_image(folder / "two\nlines_0000.nii.gz", synthetic_volume(3))
    out = tmp_path / "out"
    done = predict("-i", folder, "-o", out, "-m", model_folder, "--disable-tta")
    assert (out / os.fsdecode(b"caf\xe9.nii.gz")).is_file()
    assert (out / "two\nlines.nii.gz").is_file()  # the channel suffix is still recognised
    assert not any(line.startswith("lines") for line in done.stderr.splitlines())
    record = json.loads((out / "provenance.json").read_text())["cases"]
    assert {v["status"] for v in record.values()} == {"predicted"} and len(record) == 2


def test_what_is_planted_in_the_output_folder(model_folder, tmp_path):
    """A claim file that is a folder fails its case alone; a .stunet-partial that is a link is never written through."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(folder / "a_0000.nii.gz", synthetic_volume(4))
    write_image(folder / "b_0000.nii.gz", synthetic_volume(5))
    out = tmp_path / "out"
    (out / ".stunet-partial" / "a.nii.gz.lock").mkdir(parents=True)
    done = predict("-i", folder, "-o", out, "-m", model_folder, "--disable-tta", check=False)
    assert done.returncode == 1 and (out / "b.nii.gz").is_file() and not (out / "a.nii.gz").exists()
    assert any("a.nii.gz.lock: a folder where this case's claim file belongs" in line
               for line in done.stderr.splitlines())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for target in (elsewhere, tmp_path / "dangling"):
        linked = tmp_path / f"out_{target.name}"
        linked.mkdir()
        (linked / ".stunet-partial").symlink_to(target)
        done = predict("-i", folder, "-o", linked, "-m", model_folder, "--disable-tta", check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "a symbolic link where stunet keeps unfinished files" in done.stderr
        assert not list(linked.glob("*.nii.gz"))
        assert (linked / ".stunet-partial").is_symlink()
    assert not list(elsewhere.iterdir())


def test_the_budget_counts_the_padding_of_thin_images(model_folder):
    """A thin image pads to whole tiles: the padded grid is what the budget and the memory estimate count."""
    from stunet.prediction.budget import VoxelBudget
    from stunet.prediction.model import load_model_folder

    loaded = load_model_folder(model_folder)
    budget = VoxelBudget.for_model(loaded, limit=100_000)
    with pytest.raises(CaseError, match="padded to the patch size"):
        budget.check("thin.nii.gz", (2, 2, 10000), (1.5, 1.5, 1.5))  # 40,000 voxels; 10,000 x 32 x 32 once padded
    memory = budget.memory
    assert memory.padded([6667, 1, 1]) == [6667, 32, 32]
    assert memory.estimate([10000, 2, 2], [6667, 1, 1]) > 6667 * 32 * 32 * 4


def test_headers_that_point_outside_their_folder_are_refused(tmp_path):
    """A NRRD 'data file:' or a MetaImage ElementDataFile outside the header's folder would read another file."""
    from stunet.prediction.checks import check_files

    for path, words in escaping_headers(tmp_path / "in", tmp_path / "secret.raw").values():
        with pytest.raises(CaseError, match=words):
            check_files([path])


def test_disagreeing_qform_and_sform_are_recorded(model_folder, tmp_path):
    """Decided: the image is placed as ITK reads it (here: by the scanner-coded qform); the disagreement and which form ITK followed are noted."""
    folder = tmp_path / "in"
    folder.mkdir()
    image = nib.Nifti1Image(synthetic_volume(8).T, None)
    image.set_qform(np.diag([0.8, 0.8, 3.0, 1.0]), code=1)
    shifted = np.diag([0.8, 0.8, 3.0, 1.0])
    shifted[:3, 3] = [12.0, -4.0, 30.0]
    image.set_sform(shifted, code=2)
    nib.save(image, folder / "forms_0000.nii.gz")
    out = tmp_path / "out"
    done = predict("-i", folder, "-o", out, "-m", model_folder, "--disable-tta")
    assert "qform and sform place the image up to" in done.stderr and "follows the qform" in done.stderr, done.stderr
    notes = json.loads((out / "provenance.json").read_text())["cases"]["forms"]["notes"]
    assert any("follows the qform" in n for n in notes)
    written = sitk.ReadImage(str(out / "forms.nii.gz"))
    assert np.allclose(written.GetOrigin(), sitk.ReadImage(str(folder / "forms_0000.nii.gz")).GetOrigin())
