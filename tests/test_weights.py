"""Released weights on demand (stunet.weights.hub, stunet-download): first download from a local stand-in for the Hugging
Face Hub, reuse offline, checksum refusal and record, resumed and interrupted transfers, companion files, the user's
file winning over the cache, the downstream zoo entries completed from their companion plans."""
import json
import os
import pickle
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import stunet
from checkpoint_helpers import write_v1
from hub_helpers import FakeHub
from stunet import settings
from stunet.errors import CheckpointError
from stunet.weights.checkpoint import load_checkpoint
from stunet.weights.pretrained import get_pretrained_config, register_pretrained_config, unregister_pretrained_config
from stunet.weights.hub import WeightsError, cached_path, record_file, verify_cached, weights_path

BIN = Path(sys.executable).parent
REPO = "test/stunet-tiny"
TINY = "stunet_small.tiny"


def tiny_config(name=TINY, repo=REPO, sha256=None) -> dict:
    """An STU-Net-S layout with widths 2 ... 32 (a 1 MB checkpoint) and 3 classes, served from ``repo``."""
    base = get_pretrained_config("stunet_small.totalseg104")
    return {"name": name, "model": "stunet_small", "description": "a test release",
            "architecture": {"in_channels": 1, "num_classes": 3, "strides": [[2, 2, 2]] * 5, "kernel_sizes": 3,
                             "widths": [2, 4, 8, 16, 32, 32]},
            "preprocessing": {**base.preprocessing, "patch_size": [32, 32, 64]},
            "labels": {"0": "background", "1": "ball", "2": "box"},
            "checkpoint": {"file": "tiny.model", "companion": "tiny.model.pkl", "format": "nnunet-v1",
                           "trainer": "STUNetTrainer_small", **({"sha256": sha256} if sha256 else {})},
            "sources": [{"hub": repo, "file": "tiny.model"}, {"url": "https://example.org/tiny.model"}]}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(tiny.model bytes, tiny.model.pkl bytes, config JSON file) of the test release, registered in this process."""
    folder = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    model = stunet.create_model("stunet_small", **tiny_config()["architecture"])
    path = write_v1(model.state_dict(), folder / "tiny.model")
    config_file = folder / "configs" / f"{TINY}.json"
    config_file.parent.mkdir()
    config_file.write_text(json.dumps(tiny_config()))
    register_pretrained_config(config_file)
    yield path.read_bytes(), Path(f"{path}.pkl").read_bytes(), config_file
    unregister_pretrained_config(TINY)


@pytest.fixture
def hub(release, tmp_path, monkeypatch):
    """The fake Hub serving the test release, as HF_ENDPOINT, with an empty cache in STUNET_HOME."""
    from huggingface_hub import constants
    with FakeHub() as server:
        server.add(REPO, "tiny.model", release[0])
        server.add(REPO, "tiny.model.pkl", release[1])
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("STUNET_HOME", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def go_offline(hub, monkeypatch):
    """HF_HUB_OFFLINE=1, and the server answers nothing but errors: no load may depend on it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.down = True
    return len(hub.requests)


def cli_env(hub, release, tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, STUNET_HOME=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf_home"),
               STUNET_PRETRAINED_CONFIGS=str(release[2].parent), **extra)
    return env


def run(command, env, check=True):
    done = subprocess.run([str(BIN / command[0]), *map(str, command[1:])], env=env, capture_output=True, text=True,
                          timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{command[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


# -- first download, cache, offline --------------------------------------------------------------------------------
def test_first_use_downloads_then_the_cache_is_reused_offline(hub, release, tmp_path, monkeypatch):
    path = weights_path(get_pretrained_config(TINY))
    assert path.read_bytes() == release[0] and str(path).startswith(str(tmp_path / "cache"))
    assert path.with_name("tiny.model.pkl").read_bytes() == release[1]  # the companion beside it
    record = json.loads(record_file({"hub": REPO}).read_text())["tiny.model"]
    assert record["checked_against"] == "first download" and record["size"] == len(release[0])
    assert hub.downloads("tiny.model") == 1

    served = go_offline(hub, monkeypatch)
    assert weights_path(get_pretrained_config(TINY)) == path
    model = stunet.create_model(TINY, pretrained=True)
    state = load_checkpoint(path).state_dict
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.pretrained_config.name == TINY
    assert len(hub.requests) == served  # nothing went to the network


def test_a_cached_model_loads_with_the_network_on_too_without_asking_it(hub, release):
    weights_path(get_pretrained_config(TINY))
    before = len(hub.requests)
    stunet.create_model(TINY, pretrained=True)
    assert len(hub.requests) == before


def test_missing_while_offline_is_one_line_naming_file_sources_and_stunet_download(hub, monkeypatch):
    go_offline(hub, monkeypatch)
    with pytest.raises(WeightsError) as error:
        stunet.create_model(TINY, pretrained=True)
    message = str(error.value)
    assert "\n" not in message and "tiny.model is not in the cache" in message and "HF_HUB_OFFLINE" in message
    assert f"Hub {REPO}/tiny.model" in message and "https://example.org/tiny.model" in message
    assert f"stunet-download {TINY}" in message


def test_the_users_file_wins_over_the_cache_and_the_network(hub, release, tmp_path, monkeypatch):
    served = go_offline(hub, monkeypatch)
    own = tmp_path / "mine.model"
    own.write_bytes(release[0])
    model = stunet.create_model(TINY, pretrained=own)
    assert model.pretrained_config.name == TINY and len(hub.requests) == served
    assert cached_path(get_pretrained_config(TINY)) is None


def test_a_file_of_another_class_count_is_not_taken_for_the_release(release, tmp_path):
    torch.manual_seed(0)
    other = stunet.create_model("stunet_small", **{**tiny_config()["architecture"], "num_classes": 4})
    path = write_v1(other.state_dict(), tmp_path / "tiny.model")
    with pytest.raises(CheckpointError, match=f"{path}: the checkpoint has 4 outputs and 1 input channel\\(s\\), "
                                              f"{TINY} has 3 and 1"):
        stunet.create_model(TINY, pretrained=path)
    assert stunet.create_model(TINY, pretrained=path, num_classes=5).config.num_classes == 5  # adapted on request


# -- checksums -------------------------------------------------------------------------------------------------------
def test_a_file_other_than_the_known_checksum_is_refused_and_never_loaded(hub, monkeypatch):
    """The shipped STU-Net-S config has the published SHA-256: a fabricated file on the Hub is refused."""
    from stunet.weights import loading
    hub.add("ziyanhuang/STU-Net", "small_ep4k.model", b"not the released weights")
    loaded = []
    monkeypatch.setattr(loading, "load_checkpoint", lambda *a, **k: loaded.append(a))
    with pytest.raises(WeightsError) as error:
        stunet.create_model("stunet_small.totalseg104", pretrained=True)
    message = str(error.value)
    expected = get_pretrained_config("stunet_small.totalseg104").sha256
    import hashlib
    actual = hashlib.sha256(b"not the released weights").hexdigest()
    assert "\n" not in message and f"SHA-256 {actual}" in message and f"says {expected}" in message
    assert "Hub ziyanhuang/STU-Net/small_ep4k.model" in message and "refused, not loaded" in message
    assert not loaded
    with pytest.raises(WeightsError, match="refused"):  # and again from the cache, without a download
        weights_path(get_pretrained_config("stunet_small.totalseg104"))
    assert hub.downloads("small_ep4k.model") == 1


def test_a_known_checksum_that_matches_is_accepted(hub, release, tmp_path):
    import hashlib
    register_pretrained_config({**tiny_config("stunet_small.tinysum", "test/tinysum",
                                              hashlib.sha256(release[0]).hexdigest())})
    try:
        hub.add("test/tinysum", "tiny.model", release[0])
        hub.add("test/tinysum", "tiny.model.pkl", release[1])
        assert weights_path(get_pretrained_config("stunet_small.tinysum")).read_bytes() == release[0]
        assert json.loads(record_file({"hub": "test/tinysum"}).read_text())["tiny.model"]["checked_against"] == \
            "config"
    finally:
        unregister_pretrained_config("stunet_small.tinysum")


def test_the_recorded_checksum_catches_a_changed_file(hub, release):
    path = weights_path(get_pretrained_config(TINY))
    config = get_pretrained_config(TINY)
    assert verify_cached(config).checksum == "recorded"
    with open(path.resolve(), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(WeightsError, match="its first download") as error:
        stunet.create_model(TINY, pretrained=True)
    assert "\n" not in str(error.value)
    assert verify_cached(config).checksum == "mismatch"
    # --force fetches it again, and the record still holds the first download's hash
    assert weights_path(get_pretrained_config(TINY), force=True).read_bytes() == release[0]
    assert verify_cached(config).checksum == "recorded"


# -- transfers -------------------------------------------------------------------------------------------------------
def big_file(hub) -> bytes:
    """24 MB in place of the test release, the connection cut after 15 MB. (Only the checksum is checked here, nothing
    loads it.)"""
    data = np.random.default_rng(0).bytes(24 << 20)
    hub.add(REPO, "tiny.model", data)
    hub.drop_after = 15 << 20
    return data


def test_a_dropped_connection_is_resumed_where_it_broke(hub):
    data = big_file(hub)
    assert weights_path(get_pretrained_config(TINY)).read_bytes() == data
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith("/tiny.model") and r]
    assert ranges == [f"bytes={15 << 20}-"]  # every byte received was kept (written as it came)


def test_an_interrupted_download_leaves_no_usable_file(hub, tmp_path):
    data = big_file(hub)
    hub.refuse_ranges = True  # the transfer breaks and cannot resume
    with pytest.raises(WeightsError) as error:
        weights_path(get_pretrained_config(TINY))
    assert "could not be downloaded" in str(error.value) and "\n" not in str(error.value)
    assert cached_path(get_pretrained_config(TINY)) is None
    blobs = list((tmp_path / "cache").glob("models--*/blobs/*"))
    assert blobs == [], blobs  # no partial file under any name
    with pytest.raises(WeightsError, match="not in the cache"):
        weights_path(get_pretrained_config(TINY), download=False)
    hub.drop_after, hub.refuse_ranges = None, False  # the network is back
    assert weights_path(get_pretrained_config(TINY)).read_bytes() == data


# -- downloads that never end ---------------------------------------------------------------------------------------
def files_in(folder: Path) -> list[Path]:
    """The cache's files, less the lock of a transfer whose worker thread is still winding down (.locks/, removed by
    its holder when it ends: not cached content)."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and ".locks" not in p.relative_to(folder).parts
                  ) if folder.exists() else []


def gets(hub, filename="tiny.model") -> list[str | None]:
    """The Range header of every GET of ``filename`` (None: from the first byte)."""
    return [r for method, path, r in hub.requests if method == "GET" and path.endswith("/" + filename)]


@pytest.mark.parametrize("declared", [False, True], ids=["body-without-length", "get-declares-more"])
def test_more_bytes_than_declared_are_stopped_there_and_a_retry_starts_clean(hub, release, tmp_path, declared):
    """The HEAD declares the file's size; the GET streams 256 MB. Stopped right after the declared size (or, where the
    GET declares more than the HEAD, before reading anything), nothing left in the cache, one line."""
    hub.overflow, hub.overflow_declared = 256 << 20, declared
    with pytest.raises(WeightsError) as error:
        weights_path(get_pretrained_config(TINY))
    message = str(error.value)
    assert "\n" not in message and "tiny.model could not be downloaded" in message, message
    size = len(release[0])
    if declared:
        assert f"declares {256 << 20:,} bytes where the Hub declared {size:,}; refused before reading" in message
    else:
        assert f"the server sent more than the {size:,} bytes it declared; stopped there" in message
    assert files_in(tmp_path / "cache") == []
    sent = hub.wait_sent(1)[0]
    assert sent < size + (48 << 20), sent  # what the socket buffers held, not the 256 MB: the client went away
    hub.overflow = None
    assert weights_path(get_pretrained_config(TINY)).read_bytes() == release[0]
    assert gets(hub) == [None, None]  # the retry starts from the first byte


@pytest.mark.parametrize("mode", ["drip", "stall"])
def test_a_download_past_the_deadline_is_stopped_and_a_retry_starts_clean(hub, release, tmp_path, monkeypatch, mode):
    """A server that sends a byte every 50 ms (or nothing after its headers) is given up at STUNET_DOWNLOAD_TIMEOUT
    (1.5 s here), with one line, and nothing is left in the cache."""
    monkeypatch.setenv(settings.DOWNLOAD_TIMEOUT, "1.5")
    hub.drip, hub.stall = (0.05, False) if mode == "drip" else (None, True)
    start = time.monotonic()
    with pytest.raises(WeightsError) as error:
        weights_path(get_pretrained_config(TINY))
    elapsed = time.monotonic() - start
    message = str(error.value)
    assert 1.4 < elapsed < 6, elapsed
    assert "\n" not in message and "did not finish within 1.5 s" in message and settings.DOWNLOAD_TIMEOUT in message
    assert "the partial file removed" in message and "nothing was written to the cache" in message
    assert files_in(tmp_path / "cache") == []
    assert hub.wait_sent(1)[0] < 60  # the server saw the client go: nothing reads it any more
    assert files_in(tmp_path / "cache") == []  # and the worker wrote nothing after the deadline
    hub.drip, hub.stall = None, False
    assert weights_path(get_pretrained_config(TINY)).read_bytes() == release[0]
    assert gets(hub) == [None, None]


def test_stunet_download_past_the_deadline_is_one_line(hub, release, tmp_path):
    hub.stall = True
    env = cli_env(hub, release, tmp_path, **{settings.DOWNLOAD_TIMEOUT: "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    done = run(["stunet-download", TINY], env, check=False)
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("stunet: downloading")]
    assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith("stunet-download: error: ") and "did not finish within 1 s" in errors[0]
    assert files_in(tmp_path / "cache") == []
    done = run(["stunet-download", TINY], {**env, settings.DOWNLOAD_TIMEOUT: "soon"}, check=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"stunet-download: error: {settings.DOWNLOAD_TIMEOUT}='soon' is not a number of seconds (e.g. 3600)"]


def test_a_companion_missing_on_the_hub_is_a_warning(hub, release):
    del hub.files[(REPO, "tiny.model.pkl")]
    with pytest.warns(UserWarning, match="tiny.model.pkl is not on the Hub"):
        path = weights_path(get_pretrained_config(TINY))
    assert path.read_bytes() == release[0] and not path.with_name("tiny.model.pkl").exists()
    before = len(hub.requests)
    weights_path(get_pretrained_config(TINY))  # cached: no second look for the companion
    assert len(hub.requests) == before


def test_stunet_download_fetches_a_companion_the_first_download_missed(hub, release):
    path = weights_path(get_pretrained_config(TINY))
    path.with_name("tiny.model.pkl").unlink()  # as if its download had failed
    weights_path(get_pretrained_config(TINY))  # a load does not go looking for it
    assert not path.with_name("tiny.model.pkl").exists()
    weights_path(get_pretrained_config(TINY), fetch_companion=True)  # stunet-download does
    assert path.with_name("tiny.model.pkl").read_bytes() == release[1]


def test_a_read_only_cache_still_loads_and_still_refuses(hub, release, monkeypatch):
    from stunet.weights import hub as weights
    path = weights_path(get_pretrained_config(TINY))
    os.utime(path.resolve(), ns=(1, 1))  # a copy with another modification time: re-hashed at the next load
    monkeypatch.setattr(weights, "_write_records", lambda *a: (_ for _ in ()).throw(PermissionError("read-only")))
    with pytest.warns(UserWarning, match="could not write the checksum record"):
        assert weights_path(get_pretrained_config(TINY)) == path
    with open(path.resolve(), "ab") as f:
        f.write(b"x")
    with pytest.raises(WeightsError, match="its first download"):
        weights_path(get_pretrained_config(TINY))


def test_nnunet_trainer_names_a_path_that_is_neither_file_nor_release():
    import types
    from stunet.nnunet.trainer import STUNetTrainer
    with pytest.raises(CheckpointError, match="nope.model: no such checkpoint file, nor the name of a released model "
                                              r"\(stunet_base.brats21, "):
        STUNetTrainer.load_pretrained_weights(types.SimpleNamespace(), "nope.model")


# -- the downstream zoo entries --------------------------------------------------------------------------------------
def v1_plans(channels, classes, schemes, patch=(32, 32, 32), spacing=(1.0, 1.0, 1.0), transpose=(0, 1, 2),
             modalities=None):
    """nnU-Net v1 plans as a .model.pkl holds them (fabricated values)."""
    stage = {"batch_size": 2, "patch_size": np.array(patch), "current_spacing": np.array(spacing),
             "pool_op_kernel_sizes": [[2, 2, 2]] * 4 + [[1, 2, 2]], "conv_kernel_sizes": [[3, 3, 3]] * 6}
    return {"num_stages": 1, "num_modalities": channels, "num_classes": classes - 1,
            "modalities": modalities or {c: f"mod{c}" for c in range(channels)},
            "normalization_schemes": OrderedDict((c, s) for c, s in enumerate(schemes)),
            "use_mask_for_norm": OrderedDict((c, s != "CT") for c, s in enumerate(schemes)),
            "all_classes": list(range(1, classes)), "transpose_forward": list(transpose),
            "transpose_backward": list(np.argsort(transpose)), "plans_per_stage": {0: stage},
            "dataset_properties": {"intensityproperties": {c: {"mean": 40.0, "sd": 300.0, "percentile_00_5": -1000.0,
                                                               "percentile_99_5": 1500.0, "median": 30.0}
                                                           for c in range(channels)}}}


def test_downstream_entries_state_what_is_known_and_mark_the_rest():
    ct_org, feta, brats = (get_pretrained_config(f"stunet_base.{t}") for t in ("ct_org", "feta21", "brats21"))
    assert (ct_org.in_channels, ct_org.num_classes, feta.num_classes, brats.in_channels, brats.num_classes) == \
        (1, 7, 8, 4, 5)
    assert ct_org.labels[1] == "liver" and feta.labels[7] == "brainstem" and brats.labels[4] == "class_4"
    assert ct_org.sources[0] == {"hub": "blueyo0/STU-Net_CT-ORG", "file": "base_ep1k.model"}
    assert "labels" in brats.unknown and "labels" not in ct_org.unknown
    assert brats.missing_for_prediction() == ["architecture.strides", "preprocessing.spacing",
                                              "preprocessing.normalization", "preprocessing.patch_size"]
    # a bare model name with several releases: the file's architecture picks one, True needs the full name
    with pytest.raises(ValueError, match="stunet_base.brats21, stunet_base.ct_org"):
        stunet.create_model("stunet_base", pretrained=True)


def test_unknown_values_are_filled_from_the_companion_plans():
    from stunet.nnunet.plans import dataset_json_for_pretrained, plans_for_pretrained
    ct_org = get_pretrained_config("stunet_base.ct_org")
    done = ct_org.completed(v1_plans(1, 7, ["CT"], transpose=(2, 0, 1), modalities={0: "CT"}))
    assert done.unknown == () and done.architecture["strides"] == [[2, 2, 2]] * 4 + [[1, 2, 2]]
    assert done.preprocessing["spacing"] == [1.0, 1.0, 1.0] and done.preprocessing["normalization"] == "ct"
    plans = plans_for_pretrained(done, "x", num_channels=1)
    configuration = plans["configurations"]["3d_fullres"]
    assert configuration["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["std"] == 300.0
    assert plans["transpose_forward"] == [2, 0, 1] and plans["transpose_backward"] == [1, 2, 0]
    assert configuration["patch_size"] == [32, 32, 32]
    brats = get_pretrained_config("stunet_base.brats21").completed(
        v1_plans(4, 5, ["nonCT"] * 4, modalities={0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"}))
    assert brats.unknown == ("labels",) and brats.missing_for_prediction() == []
    assert dataset_json_for_pretrained(brats)["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert plans_for_pretrained(brats, "x", num_channels=4)["configurations"]["3d_fullres"]["use_mask_for_norm"] \
        == [True] * 4
    with pytest.raises(CheckpointError, match="the plans describe 1 input channel"):
        get_pretrained_config("stunet_base.brats21").completed(v1_plans(1, 5, ["nonCT"]))


def write_release(path: Path, config_name: str, plans: dict | None) -> Path:
    """A released-layout .model of a config's architecture (random weights), with a companion holding ``plans``."""
    config = get_pretrained_config(config_name)
    torch.manual_seed(0)
    model = stunet.create_model(config.model, **config.architecture)
    write_v1(model.state_dict(), path)
    if plans is None:
        Path(f"{path}.pkl").unlink()
    else:
        with open(f"{path}.pkl", "wb") as f:
            pickle.dump(OrderedDict(init=("", 0, "", "", False, 0, True, False, True), name="STUNetTrainer_base",
                                    plans=plans), f, protocol=2)
    return path


def test_brats21_from_the_hub_predicts_four_channel_cases(hub, release, tmp_path):
    """stunet-predict --pretrained stunet_base.brats21 without --checkpoint: the weights and their companion come
    from the (fake) Hub, the companion's plans fill the preprocessing, and each case is 4 files."""
    from predict_helpers import write_cases
    served = write_release(tmp_path / "base_ep1k.model", "stunet_base.brats21",
                           v1_plans(4, 5, ["nonCT"] * 4, modalities={0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"}))
    hub.add("blueyo0/STU-Net_BraTS21", "base_ep1k.model", served.read_bytes())
    hub.add("blueyo0/STU-Net_BraTS21", "base_ep1k.model.pkl", Path(f"{served}.pkl").read_bytes())
    names = write_cases(tmp_path / "in", 1, channels=4, shape=(12, 20, 18))
    env = cli_env(hub, release, tmp_path)
    done = run(["stunet-predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "--pretrained",
                "stunet_base.brats21", "--disable-tta"], env)
    assert "downloading stunet_base.brats21 (base_ep1k.model)" in done.stderr and "1 predicted" in done.stderr
    assert (tmp_path / "out" / f"{names[0]}.nii.gz").is_file()
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels == {"0": "background", "1": "class_1", "2": "class_2", "3": "class_3", "4": "class_4"}
    assert (tmp_path / "cache" / "models--blueyo0--STU-Net_BraTS21" / "stunet-checksums.json").is_file()
    # stunet-convert's parts: completed from the companion, refused in one line without it
    from stunet.nnunet.convert import nnunet_v2_parts
    _, plans, dataset_json = nnunet_v2_parts(load_checkpoint(served))
    assert dataset_json["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / served.name
    bare.write_bytes(served.read_bytes())
    with pytest.raises(CheckpointError, match="not known without its companion base_ep1k.model.pkl"):
        nnunet_v2_parts(load_checkpoint(bare))


def test_stunet_plans_refuses_a_release_whose_preprocessing_is_unknown(tmp_path, monkeypatch, capsys):
    from stunet.cli.plans import main
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    with pytest.raises(SystemExit):
        main(["-d", "990", "--pretrained", "stunet_base.feta21"])
    assert "--pretrained stunet_base.feta21: its architecture.strides, preprocessing.spacing" in \
        capsys.readouterr().err


def test_without_the_companion_unknown_preprocessing_is_one_line(release, tmp_path):
    from stunet.prediction.model import load_pretrained
    config = tiny_config("stunet_small.tinyunknown")
    config["architecture"]["strides"] = config["preprocessing"]["spacing"] = "unknown"
    register_pretrained_config(config)
    try:
        (tmp_path / "tiny.model").write_bytes(release[0])  # no tiny.model.pkl beside it
        with pytest.warns(UserWarning, match="the strides are not known without the companion tiny.model.pkl"):
            with pytest.raises(CheckpointError) as error:
                load_pretrained("stunet_small.tinyunknown", tmp_path / "tiny.model")
        assert str(error.value) == (f"stunet_small.tinyunknown: architecture.strides, preprocessing.spacing not known "
                                    f"without the companion tiny.model.pkl beside {tmp_path / 'tiny.model'} (its "
                                    f"nnU-Net v1 plans); put it there")
    finally:
        unregister_pretrained_config("stunet_small.tinyunknown")


# -- the command line --------------------------------------------------------------------------------------------------
def test_stunet_download_prefetches_verifies_and_fails_offline_in_one_line(hub, release, tmp_path, capsys):
    from stunet.cli.download import main
    env = cli_env(hub, release, tmp_path)
    done = run(["stunet-download", TINY], env)
    path = cached_path(get_pretrained_config(TINY))[0]
    assert f"{TINY}: {path} (" in done.stdout and "with tiny.model.pkl" in done.stdout
    assert "first download" in done.stdout and "downloading" in done.stderr
    assert f"cache: {tmp_path / 'cache'}" in done.stdout and "tar -C" in done.stdout
    assert "STUNET_HOME" in done.stdout and "HF_HUB_OFFLINE=1" in done.stdout
    done = run(["stunet-download", "stunet_base.ct_org"], {**env, "HF_HUB_OFFLINE": "1"}, check=False)
    errors = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "base_ep1k.model is not in the cache" in errors[0] and "blueyo0/STU-Net_CT-ORG" in errors[0]
    assert "stunet-download stunet_base.ct_org" in errors[0]
    capsys.readouterr()
    main([TINY, "--verify"])
    assert f"{TINY}: {path}: SHA-256 matches the record of its first download" in capsys.readouterr().out
    main(["--list"])
    listed = capsys.readouterr().out
    assert f"{TINY}: cached at {path}" in listed and "stunet_base.ct_org: not cached" in listed
    with open(path.resolve(), "ab") as f:
        f.write(b"x")
    with pytest.raises(SystemExit):
        main([TINY, "--verify"])
    assert "differs from the record of its first download" in capsys.readouterr().err


def test_stunet_download_cache_dir_is_passed_on_not_put_in_the_environment(hub, release, tmp_path, capsys):
    """--cache-dir goes to the hub functions as an argument: STUNET_HOME stays as it was, and the cache it names (the
    fixture's) stays empty."""
    from stunet.cli.download import main
    folder = tmp_path / "elsewhere"
    environment = dict(os.environ)
    main([TINY, "--cache-dir", str(folder)])
    out = capsys.readouterr().out
    assert dict(os.environ) == environment
    config = get_pretrained_config(TINY)
    path = cached_path(config, folder)[0]
    assert str(path).startswith(str(folder.resolve())) and path.read_bytes() == release[0]
    assert f"cache: {folder.resolve()}" in out and f"tar -C {folder.resolve()}" in out
    assert cached_path(config) is None and not (tmp_path / "cache").exists()
    assert record_file({"hub": REPO}, folder).is_file()
    main([TINY, "--verify", "--cache-dir", str(folder)])
    assert f"{TINY}: {path}: SHA-256 matches the record of its first download" in capsys.readouterr().out
    main(["--list", "--cache-dir", str(folder)])
    assert f"{TINY}: cached at {path}" in capsys.readouterr().out
    main([TINY, "--verify"])  # the fixture's STUNET_HOME
    assert f"{TINY}: not cached" in capsys.readouterr().out
    assert hub.downloads("tiny.model") == 1


def test_stunet_predict_pretrained_without_checkpoint_downloads(hub, release, tmp_path):
    from predict_helpers import write_cases
    write_cases(tmp_path / "in", 1, shape=(12, 20, 18))
    env = cli_env(hub, release, tmp_path)
    done = run(["stunet-predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "--pretrained", TINY,
                "--disable-tta"], env)
    assert "1 predicted" in done.stderr and hub.downloads("tiny.model") == 1
    hub.down = True  # offline: HF_HUB_OFFLINE in a new process, and nothing served
    done = run(["stunet-predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "--pretrained", TINY,
                "--overwrite", "--disable-tta"], {**env, "HF_HUB_OFFLINE": "1"})
    assert "1 predicted" in done.stderr and "downloading" not in done.stderr and hub.downloads("tiny.model") == 1
