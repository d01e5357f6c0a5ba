"""STU-Net plans (stunet-plans, stunet.nnunet.planner): the architecture lives in the plans, nnU-Net's own
get_network_from_plans builds it, the stock nnUNetTrainer trains it and nnUNetv2_predict predicts with it."""
import json
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_helpers import assert_same_geometry, run
from stunet.nnunet.network import NETWORK_CLASS_NAME, architecture_for_plans
from stunet.nnunet.planner import PLANNERS
from stunet.nnunet_plugins import stunet_trainers
from stunet.models.network import STUNet

GIB = 2 ** 30


def test_pretraining_preprocessing_for_a_dataset(planned_dataset):
    root, folder, env = planned_dataset
    log = run(["stunet-plans", "-d", "990", "--pretrained", "stunet_small.totalseg104", "--patch-size", "32", "32",
               "64", "--preprocess", "-np", "1"], env)
    assert ("nnUNetv2_train 990 3d_fullres 0 -p STUNetPlans_small_totalseg104 -tr STUNetTrainer_small_ft "
            "-pretrained_weights stunet_small.totalseg104") in log
    assert "nnUNetv2_preprocess" not in log.split("next:")[1]  # --preprocess ran it
    preprocessed = root / "preprocessed" / folder.name
    plans = json.loads((preprocessed / "STUNetPlans_small_totalseg104.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["patch_size"] == [32, 32, 64]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] and plans["transpose_forward"] == [0, 1, 2]
    assert plans["image_reader_writer"] == "SimpleITKIO"
    assert config["architecture"]["network_class_name"] == NETWORK_CLASS_NAME
    assert config["architecture"]["arch_kwargs"]["strides"][1:] == [[2, 2, 2]] * 4 + [[1, 1, 2]]
    cases = sorted((preprocessed / "STUNetPlans_small_totalseg104_3d_fullres").glob("*.pkl"))
    assert len(cases) == 10
    properties = pickle.loads(cases[0].read_bytes())  # 24 x 32 x 32 voxels at (2.0, 0.9, 0.9) mm -> 1.5 mm
    assert np.allclose(properties["spacing"], [2.0, 0.9, 0.9], atol=1e-4)


def test_refuses_an_indivisible_patch_and_existing_plans(planned_dataset):
    root, folder, env = planned_dataset
    exe = str(Path(sys.executable).parent / "stunet-plans")
    args = [exe, "-d", "990", "--pretrained", "stunet_small.totalseg104"]
    done = subprocess.run(args + ["--patch-size", "32", "32", "48", "--plans-name", "X"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "axis 2 (48 vs 32)" in done.stderr
    subprocess.run(args + ["--plans-name", "Y"], env=env, check=True, capture_output=True)
    done = subprocess.run(args + ["--plans-name", "Y"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "--overwrite" in done.stderr
    done = subprocess.run(args + ["--plans-name", "../elsewhere"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "plain name" in done.stderr


# nnU-Net's own nnUNetTrainer, its schedule shortened on the instance (nnU-Net's shortest stock variant trains 250
# iterations), run as nnUNetv2_train runs it
STOCK_TRAINING = """
import torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args("990", "3d_fullres", 0, "nnUNetTrainer", "STUNetPlans_small", device=torch.device("cpu"))
assert type(trainer).__module__ == "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 5, 2
trainer.run_training()
trainer.perform_actual_validation()
"""


def test_stock_trainer_trains_stunet_plans_and_nnunet_predicts(planned_dataset, tmp_path):
    """Plans from the dataset's own fingerprint, nnU-Net's nnUNetTrainer and nnUNetv2_predict."""
    root, folder, env = planned_dataset
    log = run(["stunet-plans", "-d", "990", "--model", "stunet_small", "--preprocess", "-np", "1"], env)
    assert "3d_fullres: stunet_small" in log
    done = subprocess.run([sys.executable, "-c", STOCK_TRAINING], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = root / "results" / folder.name / "nnUNetTrainer__STUNetPlans_small__3d_fullres"
    plans = json.loads((results / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == NETWORK_CLASS_NAME
    weights = torch.load(results / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    with torch.device("meta"):
        published = STUNet(1, 3, [1] * 6, [16, 32, 64, 128, 256, 256], [[2, 2, 2]] * 5).state_dict()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in published.items()}
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", "990", "-c", "3d_fullres", "-f",
         "0", "-p", "STUNetPlans_small", "-tr", "nnUNetTrainer", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--disable_tta"], env)
    for reference in sorted((folder / "labelsTs").glob("*.nii.gz")):
        assert_same_geometry(out / reference.name, reference)
    # the STU-Net trainer of that size takes the same plans and builds the same network
    pm = PlansManager(plans)
    with torch.device("meta"):
        net = stunet_trainers.STUNetTrainer_small.build_network_architecture(
            pm, pm.get_configuration("3d_fullres"), 1, 3, False)
        with pytest.raises(ValueError, match="the plans describe stunet_small but STUNetTrainer_large"):
            stunet_trainers.STUNetTrainer_large.build_network_architecture(
                pm, pm.get_configuration("3d_fullres"), 1, 3, False)
    assert list(net.state_dict()) == list(weights)


def test_get_network_from_plans_builds_released_layout_with_options():
    import stunet
    with torch.device("meta"):
        config = stunet.create_model("stunet_large.totalseg104").config
        arch = architecture_for_plans(config, "block")
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     1, 105, deep_supervision=False)
    assert sum(p.numel() for p in net.parameters()) == 440_302_605
    assert net.config.strides[-1] == (1, 1, 2) and net.activation_checkpointing == "block"
    assert net.deep_supervision is False


def _planner(model_name, budget_gb, checkpointing=False):
    """A planner without a dataset, for its patch and batch rules."""
    planner = object.__new__(PLANNERS[model_name])
    planner.UNet_vram_target_GB, planner.UNet_min_batch_size, planner.max_dataset_covered = budget_gb, 2, 0.05
    planner.fixed_patch_size, planner.pretrained, planner._estimates = None, None, {}
    planner.activation_checkpointing = checkpointing
    planner.dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}}
    planner.preprocessor_name, planner.label_map, planner.fixed_batch_size = "DefaultPreprocessor", None, None
    planner.dataset_fingerprint = {"spacings": [[1.5, 1.5, 1.5]], "shapes_after_crop": [[300, 300, 300]],
                                   "median_relative_size_after_cropping": 1.0}
    planner.anisotropy_threshold = 3
    return planner


@pytest.mark.parametrize("model_name", ["stunet_base", "stunet_large"])
def test_patch_and_batch_fit_the_memory_budget(model_name):
    plans = {}
    for budget in (12, 24, 80):
        plan = _planner(model_name, budget).get_plans_for_configuration([1.5] * 3, [300] * 3, "x", 300 ** 3 * 1000,
                                                                          {})
        plans[budget] = plan
        assert plan["stunet_estimated_gpu_memory_gb"] * GIB <= budget * GIB
        with torch.device("meta"):
            net = get_network_from_plans(plan["architecture"]["network_class_name"],
                                         plan["architecture"]["arch_kwargs"], [], 1, 2, allow_init=False)
        assert all(p % d == 0 for p, d in zip(plan["patch_size"], net.config.total_stride))
    size = {b: np.prod(p["patch_size"]) * p["batch_size"] for b, p in plans.items()}
    assert size[12] <= size[24] <= size[80] and size[12] < size[80]


def test_checkpointing_in_the_plans_buys_a_larger_patch():
    plain = _planner("stunet_large", 12).get_plans_for_configuration([1.5] * 3, [300] * 3, "x", 1e12, {})
    ckpt = _planner("stunet_large", 12, "stage").get_plans_for_configuration([1.5] * 3, [300] * 3, "x", 1e12, {})
    assert np.prod(ckpt["patch_size"]) > np.prod(plain["patch_size"])
    assert ckpt["architecture"]["arch_kwargs"]["activation_checkpointing"] == "stage"


# -- one source for the released preprocessing (issue 24, point 5) ---------------------------------------------------
#: what the released preprocessing sets in the plans and in their 3d_fullres configuration
RELEASED_PLANS_ENTRIES = ("image_reader_writer", "transpose_forward", "transpose_backward")
RELEASED_CONFIGURATION_ENTRIES = ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm",
                                  "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                                  "resampling_fn_seg_kwargs", "resampling_fn_probabilities",
                                  "resampling_fn_probabilities_kwargs")


def _companion_plans(config) -> dict | None:
    """Fabricated nnU-Net v1 plans (a companion .model.pkl's) for a release whose own are not published: CT
    normalization with its statistics and a transposition for one-channel releases, z-score with masks for others."""
    if not config.unknown:
        return None
    channels, ct = config.in_channels, config.in_channels == 1
    stage = {"batch_size": 2, "patch_size": np.array([32, 64, 64]), "current_spacing": np.array([3.0, 0.8, 0.8]),
             "pool_op_kernel_sizes": [[1, 2, 2]] + [[2, 2, 2]] * 3 + [[1, 2, 2]],
             "conv_kernel_sizes": [[3, 3, 3]] * 6}
    return {"num_stages": 1, "num_modalities": channels, "num_classes": config.num_classes - 1,
            "modalities": {c: f"mod{c}" for c in range(channels)},
            "normalization_schemes": {c: "CT" if ct else "nonCT" for c in range(channels)},
            "use_mask_for_norm": {c: not ct for c in range(channels)},
            "transpose_forward": [2, 0, 1] if ct else [0, 1, 2], "transpose_backward": [1, 2, 0] if ct else [0, 1, 2],
            "plans_per_stage": {0: stage},
            "dataset_properties": {"intensityproperties": {c: {"mean": 40.0, "sd": 300.0, "percentile_00_5": -1000.0,
                                                               "percentile_99_5": 1500.0} for c in range(channels)}}}


def _planner_plans(config, companion, tmp_path, monkeypatch) -> dict:
    """What ``stunet-plans --pretrained`` writes for a dataset of the release's channels (its own fingerprint's
    spacing, shapes and intensities differ from the release's)."""
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from stunet.nnunet.plans import dataset_json_for_pretrained

    name = "Dataset991_Released"
    raw, preprocessed = tmp_path / "raw", tmp_path / "preprocessed"
    (raw / name / "imagesTr").mkdir(parents=True)
    (preprocessed / name).mkdir(parents=True)
    dataset_json = {**dataset_json_for_pretrained(config), "numTraining": 10}
    (raw / name / "dataset.json").write_text(json.dumps(dataset_json))
    channels = range(config.in_channels)
    fingerprint = {"spacings": [[2.0, 0.9, 0.7]] * 3, "shapes_after_crop": [[60, 200, 180]] * 3,
                   "median_relative_size_after_cropping": 1.0,
                   "foreground_intensity_properties_per_channel": {str(c): {
                       "mean": 1.0, "median": 1.0, "std": 2.0, "min": -5.0, "max": 5.0, "percentile_00_5": -4.0,
                       "percentile_99_5": 4.0} for c in channels}}
    (preprocessed / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_raw", str(raw))
    monkeypatch.setattr(default_experiment_planner, "nnUNet_preprocessed", str(preprocessed))
    planner = PLANNERS[config.model](name, gpu_memory_target_in_gb=80, pretrained=config.completed(companion))
    planner.plan_experiment()
    return json.loads((preprocessed / name / f"{planner.plans_identifier}.json").read_text())


def _converter_plans(config, companion, tmp_path) -> dict:
    """The plans ``stunet-convert`` writes into an nnU-Net model folder for a released checkpoint (its tensors on the
    meta device: only their shapes matter)."""
    from stunet.nnunet.convert import nnunet_v2_parts
    from stunet.models.registry import model_builder
    from stunet.weights.checkpoint import Checkpoint

    with torch.device("meta"):
        state = model_builder(config.model)(**config.completed(companion).architecture).state_dict()
    checkpoint = Checkpoint(tmp_path / config.checkpoint_file, "nnunet-v1", state, config.trainer, companion)
    _, plans, _ = nnunet_v2_parts(checkpoint, config.name)
    return plans


def _predictor_plans(config, companion, tmp_path, monkeypatch) -> dict:
    """The plans ``stunet-predict --pretrained`` predicts with (stunet.prediction.model.load_pretrained), the network
    built on the meta device in place of reading the weights."""
    import stunet.weights.factory as factory
    from stunet.models.registry import model_builder
    from stunet.prediction.model import load_pretrained

    def network(name, pretrained, **kwargs):
        done = config.completed(companion)
        with torch.device("meta"):
            net = model_builder(done.model)(**done.architecture, deep_supervision=False)
        net.pretrained_config = done
        net.load_report = types.SimpleNamespace(path=Path(pretrained), mirror_axes=(0, 1, 2))
        return net

    monkeypatch.setattr(factory, "create_model", network)
    return load_pretrained(config.name, tmp_path / config.checkpoint_file).plans


def _released_entries(plans: dict, config) -> dict:
    """The entries the released preprocessing sets (and the strides), as plans.json holds them."""
    plans = json.loads(json.dumps(plans))
    configuration = plans["configurations"]["3d_fullres"]
    entries = {**{k: plans[k] for k in RELEASED_PLANS_ENTRIES},
               **{k: configuration[k] for k in RELEASED_CONFIGURATION_ENTRIES},
               "strides": configuration["architecture"]["arch_kwargs"]["strides"]}
    if "intensity_properties" in config.preprocessing:
        entries["intensities"] = plans["foreground_intensity_properties_per_channel"]
    return entries


@pytest.mark.parametrize("name", ["stunet_small.totalseg104", "stunet_base.totalseg104", "stunet_large.totalseg104",
                                  "stunet_huge.totalseg104", "stunet_base.ct_org", "stunet_base.feta21",
                                  "stunet_base.brats21"])
def test_planner_converter_and_predictor_take_one_released_preprocessing(name, tmp_path, monkeypatch):
    from stunet.weights.pretrained import get_pretrained_config, list_pretrained

    shipped = [n for n in list_pretrained() if get_pretrained_config(n).origin.startswith("pretrained_configs/")]
    assert name in shipped and len(shipped) == 7  # a new shipped release belongs in the parameters above
    config = get_pretrained_config(name)
    companion = _companion_plans(config)
    done = config.completed(companion)
    planned = _released_entries(_planner_plans(config, companion, tmp_path, monkeypatch), done)
    converted = _released_entries(_converter_plans(config, companion, tmp_path), done)
    predicted = _released_entries(_predictor_plans(config, companion, tmp_path, monkeypatch), done)
    assert planned == converted == predicted
    if companion is None:  # the TotalSegmentator releases, as published
        assert planned["spacing"] == [1.5, 1.5, 1.5] and planned["patch_size"] == [128, 128, 128]
        assert planned["transpose_forward"] == [0, 1, 2] and planned["image_reader_writer"] == "SimpleITKIO"
        assert planned["normalization_schemes"] == ["ZScoreNormalization"] and planned["use_mask_for_norm"] == [False]
        assert planned["strides"][1:] == [[2, 2, 2]] * 4 + [[1, 1, 2]]
    elif config.in_channels == 1:  # transposed, CT normalization with the release's statistics
        assert planned["transpose_forward"] == [2, 0, 1] and planned["spacing"] == [3.0, 0.8, 0.8]
        assert planned["normalization_schemes"] == ["CTNormalization"]
        assert planned["intensities"]["0"]["percentile_00_5"] == -1000.0
    else:
        assert planned["normalization_schemes"] == ["ZScoreNormalization"] * 4
        assert planned["use_mask_for_norm"] == [True] * 4
