"""stunet-predict across processes: the part from torchrun or SLURM, one GPU per local rank, and claims that keep
processes sharing an output folder from predicting (and writing) the same case twice."""
import json
import os
import re
import subprocess
import time

import pytest

from nnunet_helpers import BIN
from predict_helpers import labels_of, make_model_folder, write_cases
from stunet.prediction.claims import Claims
from stunet.prediction.parts import Part, choose_part, local_device

PREDICTED = re.compile(r"stunet-predict: (\d+) predicted, (\d+) skipped")


# -- which part ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Part(3, 8, "torchrun")),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "9"}, Part(4, 10, "SLURM array")),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "7", "SLURM_ARRAY_TASK_STEP": "2"}, Part(2, 4, "SLURM array")),  # --array=1-7:2
    ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}, Part(2, 4, "SLURM tasks")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # the batch script itself is no srun step: not split
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"},
     Part(3, 6, "SLURM array + SLURM tasks")),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "4",
      "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, Part(9, 12, "SLURM array + torchrun")),
])
def test_part_from_the_launcher(environ, expected):
    assert choose_part(None, None, environ) == expected


def test_explicit_parts_win_and_bad_settings_are_refused():
    torchrun = {"RANK": "1", "WORLD_SIZE": "2"}
    assert choose_part(4, 3, torchrun) == Part(3, 4, "--num-parts")
    assert choose_part(4, None, torchrun) == Part(0, 4, "--num-parts")
    assert Part(3, 4, "--num-parts").describe() == "part 4/4 (from --num-parts)"
    assert Part(1, 3, "x").select(list("abcdefg")) == ["b", "e"]
    for num_parts, part_id, environ, message in [
            (2, 2, {}, "--part-id must be in 0..1"), (None, 1, {}, "--part-id needs --num-parts"),
            (None, None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
                          "SLURM_ARRAY_TASK_MAX": "7"}, "not one range with one step"),  # --array=0,3,7
            (None, None, {"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
            (None, None, {"RANK": "2", "WORLD_SIZE": "2"}, "out of range")]:
        with pytest.raises(ValueError, match=message):
            choose_part(num_parts, part_id, environ)


def test_one_gpu_per_local_rank(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_device("cuda", {"LOCAL_RANK": "2"}) == "cuda:2"
    assert local_device("cuda", {"LOCAL_RANK": "5"}) == "cuda:1"  # more processes than GPUs: shared
    assert local_device("cuda", {"SLURM_LOCALID": "3"}) == "cuda:3"
    assert local_device("cuda", {}) == "cuda"  # one process: unchanged
    assert local_device("cuda:0", {"LOCAL_RANK": "2"}) == "cuda:0"  # an explicit GPU stays
    assert local_device("cpu", {"LOCAL_RANK": "2"}) == "cpu"


# -- claims --------------------------------------------------------------------------------------------------------
def test_claims_exclude_each_other_until_released(tmp_path):
    first, second = Claims(tmp_path), Claims(tmp_path)
    second.me = {**second.me, "pid": os.getppid()}  # another live process of this host
    assert first.claim("a.nii.gz") and first.holds()
    assert not second.claim("a.nii.gz")
    assert second.claim("b.nii.gz")
    first.release()
    assert not (tmp_path / "a.nii.gz.lock").exists()
    assert second.claim("a.nii.gz")  # releases b, takes a
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz.lock"]
    second.close()
    first.close()
    assert list(tmp_path.iterdir()) == []


def _foreign_claim(path, host, pid, age=0.0):
    path.write_text(json.dumps({"host": host, "pid": pid, "pidns": Claims(path.parent).me["pidns"], "token": "x"}))
    os.utime(path, (time.time() - age, time.time() - age))


def test_stale_claims_are_taken_over(tmp_path):
    claims = Claims(tmp_path, stale_after=600)
    lock = claims.path("case.nii.gz")
    dead = subprocess.Popen(["true"])
    dead.wait()
    _foreign_claim(lock, claims.me["host"], dead.pid)  # this host, process gone: stale at once
    assert claims.claim("case.nii.gz") and claims.holds()
    claims.release()
    _foreign_claim(lock, "elsewhere", 1, age=30)  # another machine, refreshed 30 s ago: respected
    assert not claims.claim("case.nii.gz")
    _foreign_claim(lock, "elsewhere", 1, age=601)  # not refreshed for longer than stale_after: taken over
    assert claims.claim("case.nii.gz")
    _foreign_claim(lock, "elsewhere", 1)  # ... and when someone takes it from us, we know
    assert not claims.holds()
    claims.release()
    assert lock.exists()  # their claim is not ours to remove
    claims.close()


def test_heartbeat_keeps_a_claim_fresh(tmp_path):
    claims = Claims(tmp_path, heartbeat=0.05)
    assert claims.claim("case.nii.gz")
    lock = claims.path("case.nii.gz")
    os.utime(lock, (1, 1))
    deadline = time.time() + 10
    while lock.stat().st_mtime < time.time() - 60 and time.time() < deadline:
        time.sleep(0.05)
    assert lock.stat().st_mtime > time.time() - 60
    claims.close()


# -- stunet-predict under launchers, several processes on one folder -----------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return root, write_cases(root / "in", 6)


def _start(command, environ=None):
    return subprocess.Popen(command, env={**os.environ, **(environ or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process, timeout=600):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def _predicted(*logs):
    return sum(int(n) for log in logs for n, _ in PREDICTED.findall(log))


def _check_outputs(out, names):
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{n}.nii.gz" for n in names)
    assert not (out / ".stunet-partial").exists()  # no unfinished file, no claim left behind
    for name in names:
        assert labels_of(out / f"{name}.nii.gz").shape == (14, 40, 36)  # whole, readable files


def test_torchrun_parts_and_a_concurrent_run_predict_each_case_once(model, cases, tmp_path):
    """torchrun's two processes take parts 1/2 and 2/2 while a third process predicts the whole folder into the same
    output: every case is predicted exactly once over the three, and every output is whole."""
    root, names = cases
    out = tmp_path / "out"
    args = ["-i", root / "in", "-o", out, "-m", model, "--disable-tta"]
    launched = _start([BIN / "torchrun", "--standalone", "--nproc_per_node=2", BIN / "stunet-predict", *args])
    alone = _start([BIN / "stunet-predict", *args])
    logs = [_finish(launched), _finish(alone)]
    assert "part 1/2 (from torchrun)" in logs[0] and "part 2/2 (from torchrun)" in logs[0]
    assert len(PREDICTED.findall(logs[0])) == 2 and _predicted(*logs) == len(names)
    _check_outputs(out, names)


def test_the_same_slurm_array_part_twice(model, cases, tmp_path):
    """Two tasks given the same array index (--array=1-2, task 1 twice) split that part's cases between them."""
    root, names = cases
    out = tmp_path / "out"
    array = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_MAX": "2"}
    command = [BIN / "stunet-predict", "-i", root / "in", "-o", out, "-m", model, "--disable-tta"]
    logs = [_finish(p) for p in [_start(command, array), _start(command, array)]]
    assert all("part 1/2 (from SLURM array)" in log for log in logs)
    assert _predicted(*logs) == 3
    _check_outputs(out, names[0::2])


def test_a_part_without_cases_succeeds(model, cases, tmp_path, monkeypatch, capsys):
    from stunet.cli import predict as cli

    root, names = cases
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["-i", str(root / "in"), "-o", str(tmp_path / "out"), "-m", str(model), "--device", "cpu"])
    assert stopped.value.code == 0
    assert "part 8/8 (from torchrun): no cases in this part (6 in all)" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.nii.gz"))
