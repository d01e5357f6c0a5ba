"""nnUNetv2_train -pretrained_weights NAME (a released model's name instead of a file): the weights are downloaded from
a local stand-in for the Hugging Face Hub into the cache, checked, and fine-tuned by the stock nnUNetv2_train."""
import json
from importlib import resources

import pytest
import torch

import stunet
from checkpoint_helpers import write_v1
from hub_helpers import FakeHub
from nnunet_helpers import run
from stunet.weights.checkpoint import load_checkpoint
from stunet.weights.pretrained import get_pretrained_config

NAME = "stunet_small.hubtest"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The fake Hub serving a 105-class STU-Net-S with the released layout as test/stunet-small small_ep4k.model, and
    a config folder naming it (for STUNET_PRETRAINED_CONFIGS)."""
    folder = tmp_path_factory.mktemp("hubtest")
    torch.manual_seed(0)
    model = stunet.create_model("stunet_small", strides=[[2, 2, 2]] * 4 + [[1, 1, 2]])
    path = write_v1(model.state_dict(), folder / "small_ep4k.model")
    released = get_pretrained_config("stunet_small.totalseg104")
    config = json.loads((resources.files("stunet.pretrained_configs") / "stunet_small.totalseg104.json").read_text())
    config["name"] = NAME
    config["checkpoint"].pop("sha256")  # recorded at the first download
    config["sources"] = [{"hub": "test/stunet-small", "file": released.checkpoint_file}]
    (folder / "configs").mkdir()
    (folder / "configs" / f"{NAME}.json").write_text(json.dumps(config))
    with FakeHub() as hub:
        hub.add("test/stunet-small", "small_ep4k.model", path.read_bytes())
        hub.add("test/stunet-small", "small_ep4k.model.pkl", (folder / "small_ep4k.model.pkl").read_bytes())
        yield hub, folder, path


def _env(planned_dataset, served, tmp_path):
    hub, folder, _ = served
    return {**{k: v for k, v in planned_dataset[2].items() if k != "HF_HUB_OFFLINE"}, "HF_ENDPOINT": hub.url,
            "STUNET_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf_home"),
            "STUNET_PRETRAINED_CONFIGS": str(folder / "configs")}


def test_pretrained_weights_by_name_are_downloaded_and_fine_tuned(planned_dataset, served, tmp_path):
    hub, _, path = served
    root = planned_dataset[0]
    trainer = "STUNetTrainer_small_ft_smoke"
    log = run(["nnUNetv2_train", "990", "3d_fullres", "1", "-tr", trainer, "-device", "cpu", "-pretrained_weights",
               NAME], _env(planned_dataset, served, tmp_path))
    cached = next((tmp_path / "cache" / "models--test--stunet-small" / "snapshots").glob("*/small_ep4k.model"))
    assert cached.read_bytes() == path.read_bytes() and hub.downloads("small_ep4k.model") == 1
    assert f"Loaded pretrained weights from {NAME} ({cached}) (nnunet-v1)" in log
    assert "120 tensors transferred, 0 adapted to the input channels, 10 re-initialised" in log
    fold = root / "results" / "Dataset990_STUNetSynthetic" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_1"
    trained = load_checkpoint(fold / "checkpoint_final.pth").state_dict
    assert trained["seg_outputs.4.weight"].shape[0] == 3


def test_a_refused_download_stops_nnunetv2_train_in_one_line(planned_dataset, served, tmp_path):
    """The shipped STU-Net-S config has the published SHA-256; a fabricated file from the Hub is refused."""
    hub = served[0]
    hub.add("ziyanhuang/STU-Net", "small_ep4k.model", b"fabricated")
    with pytest.raises(AssertionError) as error:
        run(["nnUNetv2_train", "990", "3d_fullres", "1", "-tr", "STUNetTrainer_small_ft_smoke", "-device", "cpu",
             "-pretrained_weights", "stunet_small.totalseg104"], _env(planned_dataset, served, tmp_path))
    stderr = str(error.value).split("--- stderr\n")[1]
    assert "nnUNetv2_train: error: -pretrained_weights stunet_small.totalseg104: " in stderr
    assert "refused, not loaded" in stderr and "Traceback" not in stderr
