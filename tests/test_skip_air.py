"""Tiles of a CT that hold no body are not run (stunet.prediction.body): a synthetic CT-like volume, a body in air,
gives the labels of the full run with tiles skipped, with and without mirroring; models of other images skip
nothing."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from stunet.prediction.body import MARGIN, air_rule, body_mask, tiles_to_run
from stunet.prediction.segmenter import Segmenter


@pytest.fixture(scope="module")
def ct_model(model_folder, tmp_path_factory):
    """The test model (patch 16×32×32 at 1.5 mm, z-score normalisation) with its channel named CT."""
    folder = tmp_path_factory.mktemp("ct") / "model"
    shutil.copytree(model_folder, folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dataset, "channel_names": {"0": "CT"}}))
    return folder


def body_in_air(path, shape=(16, 112, 112)):
    """A CT-like image at the model's 1.5 mm: air at -1000 HU around an ellipsoid body (soft tissue with texture, a
    dense organ) in the middle of the field."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    centre = [s / 2 for s in shape]
    body = ((z - centre[0]) / 10) ** 2 + ((y - centre[1]) / 12) ** 2 + ((x - centre[2]) / 12) ** 2 <= 1
    organ = ((z - centre[0]) / 5) ** 2 + ((y - centre[1] + 3) / 5) ** 2 + ((x - centre[2] - 2) / 6) ** 2 <= 1
    array = np.full(shape, -1000, dtype=np.int16)
    array[body] = 40 + rng.normal(0, 20, int(body.sum()))
    array[organ] = 180
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("mirroring", [False, True])
def test_skipped_tiles_give_the_full_runs_labels(ct_model, tmp_path, mirroring):
    image = body_in_air(tmp_path / "ct_0000.nii.gz")
    runs = {}
    for skip in (True, False):
        segmenter = Segmenter(model_folder=ct_model, device="cpu", mirroring=mirroring, skip_air=skip)
        runs[skip] = segmenter.predict(image)
        assert (segmenter.options["skip_air"] is not False) == skip
    skipped, full = runs[True], runs[False]
    assert full.skipped_tiles == 0 and skipped.tiles == full.tiles == 36
    assert skipped.skipped_tiles == 20  # the outer ring of the 6×6 tile positions
    assert len(np.unique(full.labels)) > 1
    np.testing.assert_array_equal(skipped.labels, full.labels)


def test_other_images_skip_nothing(model_folder, ct_model):
    """A model of another modality (channel not named CT, z-score) has no rule; a CT model has one."""
    from stunet.prediction.model import load_model_folder

    assert air_rule(load_model_folder(model_folder)) is None
    assert air_rule(load_model_folder(ct_model)) is not None


def test_mask_keeps_large_components_and_drops_specks():
    import torch

    image = torch.full((40, 60, 60), -1.0)
    image[10:30, 20:40, 20:40] = 1.0  # the body
    image[10:30, 45:46, 10:50] = 1.0  # a table apart from it: 10 % of the body's voxels, kept
    image[5, 5, 5] = 1.0  # a speck of noise: dropped
    mask = body_mask(image, 0.0, (slice(None),) * 3)
    assert mask[15, 25, 25] and mask[15, 45, 20] and not mask[5, 5, 5]
    tiles = [(slice(0, 16), slice(0, 16), slice(0, 16)), (slice(10, 26), slice(20, 36), slice(20, 36)),
             (slice(24, 40), slice(0, 16), slice(44, 60))]
    assert tiles_to_run(mask, tiles) == [False, True, False]
    near = [(slice(0, 16), slice(0, 21 - MARGIN), slice(20, 36))]  # the body lies MARGIN voxels beyond its last
    assert tiles_to_run(mask, near) == [True] and tiles_to_run(mask, near, margin=0) == [False]
