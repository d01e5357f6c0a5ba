"""One door for weights (stunet.weights.loading): a released model loaded by name and the same checkpoint converted to
a model folder predict with the same mirroring axes; the architecture of a checkpoint is inferred once per load;
trust without weights is refused in one line; parallel processes on a cold cache download a released file once."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import stunet
from checkpoint_helpers import write_v1
from hub_helpers import FakeHub
from stunet.cli.convert import main as convert
from stunet.nnunet.plans import CONFIGURATION, dataset_json_for_pretrained, plans_for_pretrained
from stunet.prediction.model import load_model_folder, load_pretrained
from stunet.weights import loading, transfer
from stunet.weights.pretrained import register_pretrained_config, unregister_pretrained_config
from test_weights import tiny_config

NAME = "stunet_small.doortest"
REPO = "test/stunet-door"


def door_config(sha256: str | None = None) -> dict:
    """test_weights' tiny release (widths 2 ... 32, 3 classes), its checkpoint an nnU-Net v2 file on ``REPO`` trained
    with STUNetTrainer (any size: the layout is custom)."""
    return {**tiny_config(NAME, REPO), "sources": [{"hub": REPO, "file": "door.pth"}],
            "checkpoint": {"file": "door.pth", "format": "nnunet-v2", "trainer": "STUNetTrainer",
                           **({"sha256": sha256} if sha256 else {})}}


@pytest.fixture(scope="module")
def release():
    config = register_pretrained_config(door_config())
    yield config
    unregister_pretrained_config(NAME)


def write_release_v2(config, path: Path, mirroring: tuple) -> Path:
    """The release's weights as nnU-Net v2's checkpoint_final.pth, with its plans, dataset.json and ``mirroring`` as
    its inference_allowed_mirroring_axes."""
    torch.manual_seed(0)
    network = stunet.create_model(config.name)
    torch.save({"network_weights": network.state_dict(), "trainer_name": config.trainer, "current_epoch": 1000,
                "init_args": {"plans": plans_for_pretrained(config, dataset_name=config.name, num_channels=1),
                              "configuration": CONFIGURATION, "fold": "all",
                              "dataset_json": dataset_json_for_pretrained(config)},
                "inference_allowed_mirroring_axes": mirroring}, path)
    return path


def converted(checkpoint: Path, folder: Path, *extra: str):
    with pytest.raises(SystemExit) as done:
        convert([str(checkpoint), str(folder), *extra])
        raise SystemExit(0)
    assert done.value.code in (0, None)
    return load_model_folder(folder)


@pytest.mark.parametrize("mirroring", [(1, 2), ()])
def test_a_release_by_name_and_its_converted_folder_mirror_the_same_axes(release, tmp_path, mirroring):
    checkpoint = write_release_v2(release, tmp_path / "door.pth", mirroring)
    by_name = load_pretrained(NAME, checkpoint)
    folder = converted(checkpoint, tmp_path / "folder")
    assert by_name.mirror_axes == folder.mirror_axes == mirroring
    assert all(torch.equal(a, b) for a, b in zip(by_name.networks[0].state_dict().values(),
                                                  folder.networks[0].state_dict().values()))


def test_a_released_v1_model_which_states_no_axes_mirrors_all_three_on_both_routes(release, tmp_path):
    """nnU-Net v1 .model files carry no mirroring axes: both routes use all three (the released training's)."""
    torch.manual_seed(0)
    checkpoint = write_v1(stunet.create_model(NAME).state_dict(), tmp_path / "door.model")
    (tmp_path / "door.model.pkl").unlink()  # its v1 plans are not this release's
    by_name = load_pretrained(NAME, checkpoint)
    folder = converted(checkpoint, tmp_path / "folder", "--pretrained", NAME)
    assert by_name.mirror_axes == folder.mirror_axes == (0, 1, 2)


def test_trust_without_weights_is_refused_in_one_line():
    with pytest.raises(ValueError) as error:
        stunet.create_model("stunet_small", trust_checkpoint=True)
    message = str(error.value)
    assert "\n" not in message and "trust_checkpoint" in message and "pretrained=FILE" in message
    stunet.create_model("stunet_small", trust_checkpoint=False, widths=[2, 4, 8, 16, 32, 32])  # the default is fine


def test_models_and_their_releases_are_one_table():
    """``list_models(pretrained=True)`` lists every release as ``model.tag``, under a registered model's entry; a
    release registered at run time enters the same table and leaves it again."""
    from stunet.models.registry import get_release, list_models, list_releases, model_entry
    from stunet.weights.pretrained import get_pretrained_config, list_pretrained
    releases = list_models(pretrained=True)
    assert releases == list_releases() == list_pretrained() and "stunet_small.totalseg104" in releases
    for name in releases:
        release = get_release(name)
        assert release is get_pretrained_config(name) and name == f"{release.model}.{release.tag}"
        assert release.model in list_models() and model_entry(release.model).releases[release.tag] is release
    assert list_models("stunet_small*", pretrained=True) == list_releases("stunet_small")
    config = register_pretrained_config(tiny_config("stunet_small.tabletest", REPO))
    try:
        assert config.name in list_models(pretrained=True) and model_entry("stunet_small").releases["tabletest"] is config
    finally:
        unregister_pretrained_config(config.name)
    assert config.name not in list_models(pretrained=True) and "tabletest" not in model_entry("stunet_small").releases


def test_the_architecture_is_inferred_once_per_load(release, tmp_path, monkeypatch):
    checkpoint = write_release_v2(release, tmp_path / "door.pth", (0, 1, 2))
    calls = []
    original = transfer.architecture_of

    def counted(state_dict):
        calls.append(1)
        return original(state_dict)

    monkeypatch.setattr(transfer, "architecture_of", counted)
    monkeypatch.setattr(loading, "architecture_of", counted)
    model = stunet.create_model("stunet_small", pretrained=checkpoint)
    assert len(calls) == 1 and model.load_report.release.name == NAME
    calls.clear()
    loaded = load_pretrained(NAME, checkpoint)
    assert len(calls) == 1 and loaded.mirror_axes == (0, 1, 2)


# -- a cold cache shared by parallel processes ---------------------------------------------------------------------
CHILD = """
import sys, time
from pathlib import Path
from stunet.weights.hub import weights_path
from stunet.weights.pretrained import get_pretrained_config
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
config = get_pretrained_config(sys.argv[3])
ready.touch()
end = time.monotonic() + 300
while not go.exists() and time.monotonic() < end:
    time.sleep(0.01)
print(weights_path(config, progress=False))
"""


def test_parallel_processes_on_a_cold_cache_download_a_file_once(tmp_path):
    data = bytes(range(256)) * 3  # dripped at 100 bytes a second: the first download lasts about 8 s
    import hashlib
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "door.json").write_text(json.dumps(door_config(hashlib.sha256(data).hexdigest())))
    with FakeHub() as hub:
        hub.add(REPO, "door.pth", data)
        hub.drip = 0.01
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=hub.url, STUNET_HOME=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf_home"),
                   STUNET_PRETRAINED_CONFIGS=str(config_dir))
        go = tmp_path / "go"
        children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / f"ready{i}"), str(go), NAME],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for i in range(2)]
        try:
            end = time.monotonic() + 300
            while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < end:
                assert all(c.poll() is None for c in children), [c.communicate() for c in children]
                time.sleep(0.05)
            go.touch()  # both ask for the file at once
            results = [c.communicate(timeout=300) for c in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        assert [c.returncode for c in children] == [0, 0], results
        paths = {Path(out.strip().splitlines()[-1]) for out, _ in results}
        assert len(paths) == 1 and paths.pop().read_bytes() == data
        assert hub.downloads("door.pth") == 1
        assert sum("another process is downloading door.pth" in err for _, err in results) == 1, results
