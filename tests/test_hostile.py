"""Hostile files and careless inputs: one clear error for the file, nothing more (no crash, hang, memory blow-up, silent
wrong output or path escape)."""
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_helpers import write_v1, write_v2
from hostile_helpers import corpus, image_corpus, torch_zip, weights
from stunet.errors import CaseError
from stunet.prediction.budget import VoxelBudget, max_voxels
from stunet.io.headers import check_data_size
from stunet.prediction.checks import check_files
from stunet.errors import CheckpointError
from stunet.weights.checkpoint import load_checkpoint
from stunet.weights.plain import plain_data
from stunet.weights.safe_load import read_pickle
from stunet.weights.pickle_guard import Limits, PickleRefused, inspect_pickle

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("hostile"))


# -- 1. checkpoint reading is bounded -----------------------------------------------------------------------------
def test_every_crafted_checkpoint_is_one_line_naming_the_file_quickly(hostile):
    for name, path in hostile.items():
        start = time.perf_counter()
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        elapsed = time.perf_counter() - start
        message = str(error.value)
        assert str(path) in message or f"{path}.pkl" in message, (name, message)
        assert "\n" not in message, (name, message)
        assert elapsed < 1, (name, elapsed)


@pytest.mark.parametrize("name, expected", [
    ("object_array_pkl", "numpy dtype 'O8'"), ("object_array_pth", "numpy dtype 'O8'"),
    ("object_field_pkl", "numpy dtype 'V8'"), ("object_field_pth", "numpy dtype 'V8'"),
    ("object_dtype_class", "references numpy.dtypes.ObjectDType"), ("void_dtype", "numpy dtype 'V8'"),
    ("flagged_dtype", "flags"), ("reference_bomb_pth", "reference bomb"), ("reference_bomb_pkl", "reference bomb"),
    ("reference_bomb_unused", "reference bomb"), ("codec", "codec 'punycode'"), ("codec_pkl", "codec 'idna'"),
    ("huge_array_shape", "shape (100000, 100000)"), ("array_bigger_than_bytes", "declares 8,589,934,592 bytes"),
    ("huge_string_dtype", "larger than"), ("declared_bytes", "declares 1,099,511,627,776 bytes"),
    ("memo_index", "memo index"), ("big_int", "malformed"), ("storage_numel", "but the archive holds 16"),
    ("storage_missing", "which the archive does not hold"), ("view_outside_storage", "more than its storage"),
    ("legacy_storage_numel", "but only"), ("zip_bomb", "zip bomb"), ("non_str_key", "a key '1' of type int"),
    ("non_tensor_value", "is a list, not a tensor"), ("plans_not_dict", "init_args['plans'] is a list"),
    ("trainer_not_text", "trainer_name is list"), ("deep_nesting", "nested more than"),
    ("os_system", "builtin__.print"), ("not_a_pickle", "not a PyTorch checkpoint"),
    ("plain_pickle", "a pickle file, not a PyTorch checkpoint"), ("truncated_zip", "damaged or truncated zip"),
    ("truncated_legacy", "but only"), ("safetensors_shape", "not a readable safetensors"),
    ("safetensors_offsets", "not a readable safetensors"), ("safetensors_header", "header too large"),
    ("safetensors_labels", "'labels' is not a JSON object")])
def test_each_class_is_refused_for_its_reason(hostile, name, expected):
    with pytest.raises(CheckpointError, match=r".*" + __import__("re").escape(expected)):
        load_checkpoint(hostile[name])


@pytest.mark.parametrize("name", ["reference_bomb_pth", "reference_bomb_unused", "storage_numel", "zip_bomb",
                                  "legacy_storage_numel", "non_str_key", "plans_not_dict", "memo_index",
                                  "declared_bytes", "truncated_zip"])
def test_trust_lifts_the_allowlist_but_not_the_limits_and_structure_checks(hostile, name):
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(hostile[name], trust=True)
    assert "--trust-checkpoint" not in str(error.value) or "does not lift" in str(error.value)


def test_crafted_files_cost_neither_memory_nor_a_crash(hostile, tmp_path):
    """In a fresh interpreter (an object-dtype array from raw bytes would kill it): the whole corpus, safe and trusted
    where trust cannot run code, raises CheckpointError each time and grows the peak memory by less than 100 MB."""
    paths = [str(p) for p in hostile.values()]
    script = f"""
import json, resource, sys
sys.path.insert(0, {str(TESTS)!r})
from stunet.errors import CheckpointError
from stunet.weights.checkpoint import load_checkpoint
from checkpoint_helpers import write_v2
import torch
load_checkpoint(write_v2({{"w": torch.zeros(4)}}, __import__("pathlib").Path({str(tmp_path / 'warm.pth')!r})))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = 0
for path in {paths!r}:
    try:
        load_checkpoint(path)
    except CheckpointError:
        errors += 1
print(json.dumps({{"errors": errors, "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["errors"] == len(paths)
    assert result["grew_kb"] < 100_000, result


def test_the_object_field_file_really_crashes_an_unguarded_reader(hostile):
    """The corpus is not hypothetical: plain pickle.load of the object-field companion kills the interpreter."""
    done = subprocess.run([sys.executable, "-c", f"import pickle; print(pickle.load(open("
                                                 f"{str(hostile['object_field_pkl']) + '.pkl'!r}, 'rb')))"],
                          capture_output=True, timeout=60)
    assert done.returncode < 0, done  # killed by a signal


def test_real_layouts_still_load_within_the_limits(tmp_path, shared):
    """Released-layout v1 (.model + .pkl, legacy and zip), v2 .pth with a module's state_dict (its _metadata), and the
    released plans pickles, against limits a hundred times tighter than the defaults: far from every limit."""
    import stunet

    state = stunet.create_model("stunet_small", strides=[[2, 2, 2]] * 4 + [[1, 1, 2]]).state_dict()
    tight = Limits(opcodes=200_000, memo=50_000, memo_reads=80_000, nodes=200_000, depth=12)
    for path in (write_v1(state, tmp_path / "legacy.model"), write_v1(state, tmp_path / "zip.model", legacy=False),
                 write_v2(state, tmp_path / "checkpoint_final.pth")):
        checkpoint = load_checkpoint(path)
        assert len(checkpoint.state_dict) == len(state)
        if path.suffix == ".pth":
            import zipfile
            with zipfile.ZipFile(path) as archive:
                inspect_pickle(archive.read(f"{path.stem}/data.pkl"), limits=tight, storage_bytes=lambda k, n: None)
    for name in ("plans.pkl", "small_ep4k.model.pkl", "base_ep4k.model.pkl", "large_ep4k.model.pkl",
                 "huge_ep4k.model.pkl"):
        data = shared(f"reference/released_plans/{name}").read_bytes()
        inspect_pickle(data, limits=tight)
        content = read_pickle(shared(f"reference/released_plans/{name}"))
        json.dumps(content)  # plain data: what stunet-convert writes as JSON


def test_loaded_plans_are_plain_bounded_copies(tmp_path):
    shared_list = [1, 2, 3]
    plans = {"a": shared_list, "b": shared_list, "spacing": np.array([1.5, 1.5, 3.0]), "n": np.int64(3),
             "flag": np.bool_(True)}
    path = write_v2({"w": torch.zeros(2)}, tmp_path / "checkpoint_final.pth")
    saved = torch.load(path, weights_only=False)
    saved["init_args"]["plans"] = plans
    torch.save(saved, path)
    loaded = load_checkpoint(path).plans
    assert loaded == {"a": [1, 2, 3], "b": [1, 2, 3], "spacing": [1.5, 1.5, 3.0], "n": 3, "flag": True}
    assert loaded["a"] is not loaded["b"] and type(loaded["n"]) is int
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(CheckpointError, match="a cycle"):
        plain_data({"x": cyclic}, tmp_path / "f", "plans")
    with pytest.raises(CheckpointError, match="torch.Tensor"):
        plain_data({"x": torch.zeros(1)}, tmp_path / "f", "plans")


def test_a_bomb_passed_by_the_opcode_walk_is_caught_by_the_structure_check(tmp_path):
    """A shared-reference structure under the opcode walk's node limit (2**18 as a tree) in the plans is refused by
    the loaded-structure check before anything walks or serialises it."""
    node: list = []
    for _ in range(18):
        node = [node, node]
    path = torch_zip(tmp_path / "checkpoint_final.pth", {"network_weights": weights(), "init_args": {
        "plans": {"x": node}}}, {"0": b"\0" * 16})
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="more than 100,000 values"):
        load_checkpoint(path, trust=True)
    assert time.perf_counter() - start < 1


def test_safetensors_metadata_and_damage(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"labels": "[[[[" * 100_000})
    with pytest.raises(CheckpointError, match="'labels' is not a JSON object"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"labels": json.dumps({"1": "liver"})})
    assert load_checkpoint(path).label_names == {1: "liver"}
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(CheckpointError, match=f"{path}: not a readable safetensors"):
        load_checkpoint(path)


def test_the_walker_refuses_malformed_streams():
    for data in (b"", b"\x80\x02", b"\x80\x02)0.", b"\x80\x02h\x05.", b"\x80\x02(."):
        with pytest.raises(PickleRefused):
            inspect_pickle(data)
    inspect_pickle(pickle.dumps({"a": [1, 2.0, "x", None, True]}))


# -- 3. images are checked before they are read in full ----------------------------------------------------------
@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    return image_corpus(tmp_path_factory.mktemp("images"))


def test_every_broken_or_careless_image_is_refused_before_it_is_read(bad_images):
    budget = VoxelBudget([1.5, 1.5, 1.5], [0, 1, 2])
    for name, (path, expected) in bad_images.items():
        start = time.perf_counter()
        with pytest.raises(CaseError) as error:
            check_files([path], budget)
        message = str(error.value)
        assert str(path) in message and expected in message and "\n" not in message, (name, message)
        assert time.perf_counter() - start < 1, name


@pytest.mark.parametrize("ending, compress", [(".nii", False), (".nii.gz", True), (".nrrd", False), (".nrrd", True),
                                              (".mha", False), (".mha", True), (".mhd", False), (".mhd", True)])
def test_whole_images_of_every_format_pass(tmp_path, ending, compress):
    import SimpleITK as sitk

    path = tmp_path / f"case_0000{ending}"
    image = sitk.GetImageFromArray(np.arange(12 * 16 * 20, dtype=np.float32).reshape(12, 16, 20))
    image.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(image, str(path), compress)
    check_files([path], VoxelBudget([1.5, 1.5, 1.5], [0, 1, 2]))
    check_data_size(path)


def test_concatenated_gzip_members_count_as_one_stream(tmp_path):
    import gzip

    import SimpleITK as sitk

    whole = tmp_path / "whole.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 9, 10), np.int16)), str(whole))
    data = whole.read_bytes()
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(data[:500]) + gzip.compress(data[500:]))
    check_data_size(path)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).sum() == 8 * 9 * 10  # as ITK reads it


def test_voxel_budget_estimates_the_resampled_grid_and_can_be_raised(bad_images, monkeypatch):
    budget = VoxelBudget([1.5, 1.5, 3.0], [2, 1, 0])  # the plans' spacing is in the transposed order
    # SimpleITK's x, y, z -> nnU-Net's z, y, x -> transposed back to x, y, z, then resampled
    assert budget.resampled_shape((100, 200, 30), (0.75, 0.75, 3.0)) == [50, 100, 30]
    path, _ = bad_images["absurd_spacing"]
    monkeypatch.setenv("STUNET_MAX_VOXELS", "3e8")
    check_files([path], VoxelBudget([1.5, 1.5, 1.5], [0, 1, 2], max_voxels()))  # raised: it passes
    check_files([path], VoxelBudget([1.5, 1.5, 1.5], [0, 1, 2], max_voxels(2.2e8)))  # the option wins
    with pytest.raises(CaseError, match="--max-voxels N or STUNET_MAX_VOXELS=N"):
        check_files([path], VoxelBudget([1.5, 1.5, 1.5], [0, 1, 2], max_voxels(1e8)))
    monkeypatch.setenv("STUNET_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="not a number of voxels"):
        max_voxels()


# -- 2. every command: one line naming the file and the fix, non-zero exit, no traceback -------------------------
def _command(module: str, *args) -> tuple[int, list[str], str]:
    """Run a command's main in this process as its console script would: (exit status, stderr lines, stderr)."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(f"stunet.cli.{module}").main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if e.code is not None and not isinstance(e.code, int):
                err.write(f"{e.code}\n")
    text = err.getvalue()
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("WARNING")]
    return code, lines, text


def _assert_one_line(result, *expected):
    code, lines, text = result
    assert code not in (0, None), text
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    for part in expected:
        assert str(part) in lines[0], (part, lines[0])


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    from predict_helpers import write_cases

    folder = tmp_path_factory.mktemp("one_image")
    write_cases(folder / "in", 1)
    return folder / "in"


def test_convert_refuses_every_crafted_checkpoint_in_one_line(hostile, tmp_path):
    for name, path in hostile.items():
        _assert_one_line(_command("convert", path, tmp_path / f"{name}.pth"), path)
        assert not (tmp_path / f"{name}.pth").exists()


def test_convert_never_clobbers_outputs_or_sidecars(tmp_path):
    source = write_v2({"w": torch.zeros(2)}, tmp_path / "checkpoint_final.pth")
    (tmp_path / "small.json").write_text("{}")  # the sidecar of small.safetensors
    _assert_one_line(_command("convert", source, tmp_path / "small.safetensors"), "small.json", "--overwrite")
    assert (tmp_path / "small.json").read_text() == "{}"
    _assert_one_line(_command("convert", source, source, "--overwrite"), "would overwrite its input")
    _assert_one_line(_command("convert", source, tmp_path / "x.onnx"), "give a .pth or .safetensors file")
    (tmp_path / "folder_out").write_text("a file")
    _assert_one_line(_command("convert", source, tmp_path / "folder_out"), "is an existing file")


def test_predict_refuses_crafted_checkpoints_and_malformed_model_folders_in_one_line(hostile, model_folder, one_image,
                                                                                     tmp_path):
    import shutil

    out = tmp_path / "out"
    for name in ("object_field_pth", "reference_bomb_pth", "zip_bomb", "storage_numel", "truncated_zip",
                 "non_str_key", "os_system"):
        _assert_one_line(_command("predict", "-i", one_image, "-o", out, "--pretrained", "stunet_small.totalseg104",
                                  "--checkpoint", hostile[name]), hostile[name])

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(model_folder, folder)
        change(folder)
        return folder

    folders = {
        "missing": (tmp_path / "no_such_model", "not an nnU-Net model folder"),
        "bad_json": (broken("bad_json", lambda f: (f / "plans.json").write_text("{not json")), "plans.json: not valid"),
        "deep_json": (broken("deep_json", lambda f: (f / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)),
                      "dataset.json: not valid JSON"),
        "labels_list": (broken("labels_list", lambda f: (f / "dataset.json").write_text('{"labels": [1, 2]}')),
                        "no 'labels' object"),
        "no_configurations": (broken("no_conf", lambda f: (f / "plans.json").write_text('{"a": 1}')),
                              "no 'configurations'"),
        "bomb_checkpoint": (broken("bomb", lambda f: shutil.copy(hostile["reference_bomb_pth"],
                                                                 f / "fold_0" / "checkpoint_final.pth")),
                            "reference bomb"),
    }
    for name, (folder, expected) in folders.items():
        _assert_one_line(_command("predict", "-i", one_image, "-o", out, "-m", folder), expected)
    _assert_one_line(_command("predict", "-i", one_image, "-o", out, "-m", model_folder, "-f", "../../x"),
                     "plain names")


def test_predict_checks_outputs_before_loading_anything(model_folder, one_image, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _assert_one_line(_command("predict", "-i", one_image, "-o", a_file, "-m", model_folder), a_file, "existing file")
    _assert_one_line(_command("predict", "-i", one_image, "-o", a_file / "sub", "-m", model_folder), "cannot write")
    _assert_one_line(_command("predict", "-i", one_image, "-o", "/proc/stunet-out", "-m", model_folder),
                     "cannot write")
    source = next(one_image.iterdir())
    (tmp_path / "seg.nii.gz").mkdir()
    _assert_one_line(_command("predict", "-i", source, "-o", tmp_path / "seg.nii.gz", "-m", model_folder),
                     "is an existing folder")
    _assert_one_line(_command("predict", "-i", tmp_path / "nothing", "-o", tmp_path / "o", "-m", model_folder),
                     "does not exist")
    _assert_one_line(_command("predict", "-i", one_image, "-o", tmp_path / "o", "-m", model_folder, "--max-voxels",
                              "many"), "--max-voxels")


def test_predict_refuses_a_folder_of_other_labels_and_colliding_inputs(model_folder, one_image, tmp_path):
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.json").write_text(json.dumps({"0": "background", "1": "kidney"}))
    _assert_one_line(_command("predict", "-i", one_image, "-o", out, "-m", model_folder), "labels.json lists other "
                     "labels (1: kidney)", "--overwrite")
    assert not list(out.glob("*.nii.gz"))
    folder = tmp_path / "in"
    folder.mkdir()
    source = next(one_image.iterdir())
    shutil.copy(source, folder / "a.nii.gz")
    shutil.copy(source, folder / "a_0000.nii.gz")
    shutil.copy(source, folder / "b_0000.nii.gz")
    from stunet.prediction.discovery import find_cases

    cases = find_cases(folder, 1)
    assert [c.name for c in cases if c.problem] == ["a", "a"]
    assert all("a.nii.gz, a_0000.nii.gz would all write the output a" in c.problem for c in cases if c.problem)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(source)), str(folder / "b_0000.nrrd"))
    problems = [c.problem for c in find_cases(folder, 1) if c.name == "b"]
    assert problems and all("b_0000.nii.gz, b_0000.nrrd would all write" in p for p in problems)


def test_plans_refuses_bad_dataset_arguments_in_one_line(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    (raw / "Dataset004_Liver").mkdir(parents=True)
    (raw / "Dataset004_Other").mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    for dataset, expected in (("../../etc", "give a dataset id"), ("abc", "give a dataset id"),
                              ("4", "belongs to Dataset004_Liver, Dataset004_Other"), ("7", "no dataset '7'"),
                              ("Dataset004_../x", "give a dataset id")):
        _assert_one_line(_command("plans", "-d", dataset, "--model", "stunet_small"), expected)
    _assert_one_line(_command("plans", "-d", "4", "--model", "stunet_small", "--plans-name", "../evil"),
                     "plain name")
    monkeypatch.delenv("nnUNet_raw")
    _assert_one_line(_command("plans", "-d", "4", "--model", "stunet_small"), "set nnUNet_raw")


def test_totalseg_refuses_clobbering_and_path_escapes_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    source = tmp_path / "totalseg"
    (source / "s0001").mkdir(parents=True)
    (source / "s0001" / "ct.nii.gz").write_bytes(b"")
    raw = tmp_path / "raw"
    (raw / "Dataset601_Other").mkdir(parents=True)
    (raw / "Dataset602_Mine").mkdir()
    (raw / "Dataset602_Mine" / "dataset.json").write_text("{}")
    for args, expected in ((["-d", "601"], "already belongs to"), (["-d", "602", "--name", "Mine"], "exists"),
                           (["-d", "603", "--name", "../../escape"], "plain name"),
                           (["-d", "603", "--name", ".."], "plain name"), (["-d", "0"], "1-999"),
                           (["-d", "1000"], "1-999")):
        _assert_one_line(_command("totalseg", source, "--raw", raw, *args), expected)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset601_Other", "Dataset602_Mine"]
    _assert_one_line(_command("totalseg", tmp_path / "missing", "--raw", raw, "-d", "604"), "not a folder")
    (source / "meta.csv").write_bytes(b"\xff\xfe\x00binary")
    _assert_one_line(_command("totalseg", source, "--raw", raw, "-d", "605"), "meta.csv")


def test_download_refuses_unknown_names_in_one_line():
    _assert_one_line(_command("download", "stunet_nothing.x"), "no released model called stunet_nothing.x")


def test_info_and_debug_switch(monkeypatch):
    _assert_one_line(_command("info", "no_such_model"), "no_such_model")
    _assert_one_line(_command("info", "stunet_small", "-p", "1", "2", "3", "4"), "--patch-size")
    _assert_one_line(_command("info", "stunet_small", "--batch-size", "x"), "invalid int value")
    monkeypatch.setenv("STUNET_DEBUG", "1")
    with pytest.raises(Exception):  # the raw error, for a bug report
        from stunet.cli.errors import cli_entry

        cli_entry("x")(lambda argv: 1 / 0)([])
    monkeypatch.delenv("STUNET_DEBUG")
    from stunet.cli.errors import cli_entry

    with pytest.raises(SystemExit):
        cli_entry("x")(lambda argv: 1 / 0)([])
    with pytest.raises(ZeroDivisionError):
        cli_entry("x")(lambda argv: 1 / 0)(["--debug"])


def test_pretrained_weights_of_a_trainer_fail_in_one_line(hostile):
    """nnUNetv2_train -pretrained_weights FILE goes through the STU-Net trainers' loader: a crafted file stops the
    run with one line naming it (SystemExit), before any weight is touched."""
    import nnunetv2.run.run_training as run_training

    from stunet.nnunet.finetune import pretrained_loading_routed
    from stunet.nnunet.trainer import STUNetTrainer

    class Trainer:  # what the loader uses of a trainer before the checkpoint is read
        stunet_options = {"trust_checkpoint": (False, "default"), "label_map": (None, "default")}
        dataset_json = {"labels": {"background": 0, "organ": 1}}
        load_pretrained_weights = STUNetTrainer.load_pretrained_weights

        def __init__(self):
            self.network = torch.nn.Linear(1, 1)

    trainer = Trainer()
    original = run_training.load_pretrained_weights
    for name in ("reference_bomb_pth", "object_field_pth", "zip_bomb", "truncated_zip"):
        with pretrained_loading_routed(trainer), pytest.raises(SystemExit) as stop:
            run_training.load_pretrained_weights(trainer.network, str(hostile[name]))
        message = str(stop.value.code)
        assert message.startswith("nnUNetv2_train: error: -pretrained_weights") and str(hostile[name]) in message
        assert "\n" not in message
    assert run_training.load_pretrained_weights is original  # nothing stays patched


def test_console_scripts_print_one_line_without_traceback(hostile, tmp_path):
    """The installed commands themselves (a fresh process each): stunet-convert and stunet-info."""
    exe = Path(sys.executable).parent
    for args in ([exe / "stunet-convert", hostile["object_field_pth"], tmp_path / "o.pth"],
                 [exe / "stunet-info", "no_such_model"]):
        done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
