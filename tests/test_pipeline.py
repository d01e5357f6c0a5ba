"""The prediction pipeline around the network (stunet.prediction.preprocessing, stunet.prediction.resample, stunet.prediction.export): the same results
as nnU-Net's steps, computed in less time and memory. The speed and memory figures are in benchmarks/pipeline.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from predict_helpers import LABELS, make_model_folder
from stunet.prediction.model import Model, load_model_folder
from stunet.prediction.sliding_window import Predictor
from stunet.nnunet.network import build_from_plans
from stunet.nnunet.plans import CONFIGURATION
from stunet.prediction.preprocessing import preprocess, supported
from stunet.prediction.resample import resample_image
from stunet.nnunet.synthetic import make_case


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model_folder(make_model_folder(tmp_path_factory.mktemp("pipeline") / "model"))


@pytest.mark.parametrize("shape, new_shape, order, separate_axis, order_z", [
    ((1, 30, 41, 37), (57, 22, 70), 3, None, 0),  # up and down, cubic
    ((2, 12, 40, 44), (20, 64, 30), 3, 0, 0),  # anisotropic: in-plane cubic, nearest along z, two channels
    ((1, 12, 40, 44), (20, 64, 30), 3, 0, 1),  # linear along z
    ((1, 44, 12, 40), (30, 20, 64), 3, 1, 0),  # the separate axis in the middle
    ((1, 20, 30, 30), (40, 60, 60), 1, None, 0),
    ((1, 16, 16, 16), (16, 30, 10), 3, None, 0),  # one axis unchanged
])
def test_image_resampling_matches_nnunets(shape, new_shape, order, separate_axis, order_z):
    image = (np.random.default_rng(0).normal(size=shape) * 100).astype(np.float32)
    expected = resample_data_or_seg(image.copy(), new_shape, False, separate_axis, order, separate_axis is not None,
                                    order_z)
    ours = resample_image(torch.from_numpy(image), new_shape, order, order_z, separate_axis).numpy()
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("shape, new_shape, separate_axis", [
    ((30, 41, 37), (57, 22, 70), None),  # up and down
    ((12, 40, 44), (20, 64, 30), 0),  # anisotropic: nearest along z
    ((44, 12, 40), (30, 20, 64), 1),
])
def test_feature_resampling_matches_nnunets_and_the_matrix_path(shape, new_shape, separate_axis):
    """The two ways of applying one interpolation (stunet.prediction.resample): the export's chunks of gathered taps
    and the banded matrix products give nnU-Net's probability resampling (linear, nearest along a separate axis)."""
    from stunet.prediction.resample import resample_axis, resample_chunks, resampling_matrix

    features = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    expected = resample_data_or_seg(features.copy(), new_shape, False, separate_axis, 1, separate_axis is not None, 0)
    orders = [0 if a == separate_axis else 1 for a in range(3)]
    chunked = torch.empty((*new_shape, 3))
    for rows, part in resample_chunks(torch.from_numpy(features).movedim(0, -1), new_shape, orders, chunk=5):
        chunked[rows] = part
    matrices = torch.from_numpy(features)
    for axis, (n_in, n_out, order) in enumerate(zip(shape, new_shape, orders)):
        matrices = resample_axis(matrices, axis + 1, resampling_matrix(n_in, n_out, order))
    chunked = chunked.movedim(-1, 0).numpy()
    assert np.abs(chunked - expected).max() < 1e-5 and np.abs(matrices.numpy() - chunked).max() < 1e-5


def _nnunet_preprocessing(model: Model, image: np.ndarray, properties: dict):
    cm = model.configuration_manager
    return cm.preprocessor_class(verbose=False).run_case_npy(image.copy(), None, copy.deepcopy(properties),
                                                             model.plans_manager, cm, model.dataset_json)


def _case(shape, spacing, border: int = 0, seed: int = 0):
    image = make_case(np.random.default_rng(seed), shape, 1)[0][0].astype(np.float32)
    if border:  # a zero frame: nnU-Net crops it away
        image[:border], image[:, :border], image[..., -border:] = 0, 0, 0
    properties = {"spacing": list(spacing), "sitk_stuff": {}}
    return image[None], properties


@pytest.mark.parametrize("use_mask, border, transpose", [(False, 0, False), (True, 3, False), (False, 2, True)])
def test_preprocessing_matches_nnunets(model, use_mask, border, transpose):
    plans = copy.deepcopy(model.plans)
    plans["configurations"][CONFIGURATION]["use_mask_for_norm"] = [use_mask]
    if transpose:  # plans of a dataset whose first axis is the anisotropic one
        plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    model = Model(model.networks, plans, model.configuration, model.dataset_json)
    image, properties = _case((30, 50, 44), (0.9, 1.1, 1.3), border)
    data, _, expected = _nnunet_preprocessing(model, image, properties)
    ours, props = preprocess(image.copy(), copy.deepcopy(properties), model.plans_manager,
                             model.configuration_manager, model.dataset_json)
    assert ours.shape == data.shape
    assert np.abs(ours.numpy() - data).max() < 1e-4
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert np.array_equal(props[key], expected[key]), key


def test_other_resampling_functions_go_through_nnunet(model):
    plans = copy.deepcopy(model.plans)
    plans["configurations"][CONFIGURATION]["resampling_fn_data_kwargs"]["order"] = 2
    other = Model(model.networks, plans, model.configuration, model.dataset_json)
    assert supported(model.configuration_manager) and not supported(other.configuration_manager)
    image, properties = _case((20, 30, 30), (1.0, 1.0, 1.0))
    data, _, _ = _nnunet_preprocessing(other, image, properties)
    ours, _ = preprocess(image.copy(), properties, other.plans_manager, other.configuration_manager,
                         other.dataset_json)
    assert np.array_equal(ours.numpy(), data)


def _labels_both_ways(predictor: Predictor, image: np.ndarray, properties: dict):
    """(streamed labels of Predictor.predict, labels of resampling the features to the output grid then the head and
    argmax, as nnU-Net orders it)."""
    data, properties = predictor.preprocess(image, properties)
    streamed, _ = predictor.predict(data, properties)
    features = predictor.blended_features(data)
    new_shape = properties["shape_after_cropping_and_before_resampling"]
    direct = predictor._assemble(predictor._resampled_labels([f.movedim(0, -1) for f in features], new_shape,
                                                             predictor._orders(properties), None, None),
                                 properties, None)
    return streamed, direct, data


@pytest.mark.parametrize("shape, spacing", [
    ((50, 70, 64), (0.9, 0.7, 0.8)),  # finer than the model's 1.5 mm: streamed slab by slab
    ((20, 33, 30), (3.0, 1.0, 1.1)),  # anisotropic: nearest along z
    ((12, 40, 40), (1.0, 0.6, 0.6)),  # fewer rows than the patch at the model's spacing: padded
])
def test_streamed_export_equals_nnunets_order(model, shape, spacing):
    predictor = Predictor(model, "cpu", mirroring=False, chunk_slices=3)
    image, properties = _case(shape, spacing, seed=1)
    streamed, direct, data = _labels_both_ways(predictor, image, properties)
    assert np.prod(streamed.shape) > np.prod(data.shape[1:])  # the output grid is finer: the streamed path ran
    assert streamed.shape == image.shape[1:]
    assert len(np.unique(direct)) == len(LABELS)
    assert np.mean(streamed != direct) < 1e-4  # float rounding at near-ties only


def test_window_holds_one_tile_of_rows_and_two_folds_average(model, tmp_path):
    second = load_model_folder(make_model_folder(tmp_path / "second", seed=1))
    ensemble = Model(model.networks + second.networks, model.plans, model.configuration, model.dataset_json)
    predictor = Predictor(ensemble, "cpu", mirroring=False)
    image, properties = _case((50, 60, 60), (0.8, 0.8, 0.8), seed=2)
    data, props = predictor.preprocess(image.copy(), copy.deepcopy(properties))
    slabs = [(first, [f.clone() for f in features]) for first, features in predictor.feature_slabs(data)]
    patch_rows = model.configuration_manager.patch_size[0]
    assert len(slabs) > 2 and all(f[0].shape[0] <= patch_rows for _, f in slabs)
    assert [first for first, _ in slabs] == list(np.cumsum([0] + [f[0].shape[0] for _, f in slabs[:-1]]))
    whole = predictor.blended_features(data)
    for i in range(2):
        assert torch.allclose(torch.cat([f[i] for _, f in slabs]).movedim(-1, 0), whole[i], atol=1e-5)
    streamed, direct, _ = _labels_both_ways(predictor, image, properties)
    assert np.mean(streamed != direct) < 1e-4


def test_two_dimensional_configuration(model):
    plans = copy.deepcopy(model.plans)
    config = copy.deepcopy(plans["configurations"][CONFIGURATION])
    config.update(patch_size=[32, 32], spacing=[1.5, 1.5], data_identifier="STUNetPlans_2d")
    arch = config["architecture"]["arch_kwargs"]
    arch["kernel_sizes"] = [[3, 3]] * arch["n_stages"]
    arch["strides"] = [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [1, 2]]
    plans["configurations"]["2d"] = config
    cm = PlansManager(plans).get_configuration("2d")
    torch.manual_seed(0)
    network = build_from_plans(cm, 1, len(LABELS), False)
    with torch.no_grad():
        network.seg_outputs[-1].weight.mul_(20)
    two_d = Model([network], plans, "2d", model.dataset_json)
    predictor = Predictor(two_d, "cpu", mirroring=False)
    image, properties = _case((6, 50, 46), (2.0, 0.8, 0.9), seed=3)
    streamed, direct, data = _labels_both_ways(predictor, image, properties)
    assert data.shape[1] == 6  # slices are not resampled
    assert np.mean(streamed != direct) < 1e-4
    assert len(np.unique(direct)) > 1


def test_segmenter_frees_the_image_it_was_given(model, tmp_path):
    """stunet-predict's path: preprocessing normalises the reader's array in place (no copy of the image)."""
    from stunet.prediction.segmenter import Segmenter

    segmenter = Segmenter(model=model, device="cpu", mirroring=False)
    image, properties = _case((20, 30, 30), (1.5, 1.5, 1.5), seed=4)
    original = image.copy()
    data, _ = segmenter.preprocess(image, properties)
    assert not np.array_equal(image, original)  # normalised where it lies
    seg, _ = segmenter.segment_preprocessed(data, properties)
    assert seg.shape == original.shape[1:]
    assert set(segmenter.timings) == {"preprocess", "network", "export"}


def test_a_written_image_round_trips_through_the_reader(model, tmp_path):
    """The reader's float32 array goes in without a copy of its own (SimpleITK files, as stunet-predict reads)."""
    predictor = Predictor(model, "cpu", mirroring=False)
    image = sitk.GetImageFromArray(_case((20, 30, 30), (1, 1, 1))[0][0])
    image.SetSpacing((0.7, 0.8, 0.9))
    sitk.WriteImage(image, str(tmp_path / "c_0000.nii.gz"))
    array, properties = predictor.read([tmp_path / "c_0000.nii.gz"])
    assert array.dtype == np.float32
    data, properties = predictor.preprocess(array, properties)
    seg, _ = predictor.predict(data, properties)
    assert seg.shape == sitk.GetArrayFromImage(image).shape


def test_an_image_larger_than_memory_is_refused_early_with_the_estimate(model, tmp_path, monkeypatch):
    """The estimate (stunet.models.memory) against the memory available, before the image is read; a budget the
    user sets skips it."""
    import stunet.prediction.budget as cases  # where available_memory is read
    from stunet.prediction.discovery import Case
    from stunet.errors import CaseError
    from stunet.prediction.budget import VoxelBudget
    from stunet.prediction.checks import check_files
    from stunet.models.memory import PredictionMemory

    released_small = PredictionMemory(channels=1, widths=[16], patch=[128, 128, 128])
    whole_body = released_small.estimate([600, 512, 512], [320, 273, 273])
    assert 2.0 * 2 ** 30 < whole_body < 3.5 * 2 ** 30  # benchmarks/pipeline.py measured 2.6 GiB above the model
    released_small.probability_maps = 5  # five float16 maps on the input grid, and no streaming
    assert released_small.estimate([600, 512, 512], [320, 273, 273]) > 2 * whole_body
    image = sitk.Image([64, 64, 40], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.8, 0.8))
    path = tmp_path / "big_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    case = Case("big", [path], ".nii.gz")
    monkeypatch.setattr(cases, "available_memory", lambda: 10 * 2 ** 20)
    with pytest.raises(CaseError, match=r"takes about [\d.]+ GiB of memory .*more than the 0.0 GiB available.*"
                                        r"--max-voxels N"):
        check_files(case.files, VoxelBudget.for_model(model))
    monkeypatch.delenv("STUNET_MAX_VOXELS", raising=False)
    check_files(case.files, VoxelBudget.for_model(model, limit=1e8))  # the user's budget: no memory check
    monkeypatch.setattr(cases, "available_memory", lambda: 64 * 2 ** 30)
    check_files(case.files, VoxelBudget.for_model(model))
