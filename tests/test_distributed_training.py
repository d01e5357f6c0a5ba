"""stunet-train under torchrun on the CPU (gloo): nnU-Net's DDP training across processes and simulated machines.

Uses the synthetic dataset of conftest.planned_dataset (3d_fullres, batch size 2: one sample per rank) and
STUNetTrainer_small_smoke (2 epochs of 5 iterations). Each run takes well under a minute on 2 cores.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from nnunetv2.run.run_training import find_free_network_port

from nnunet_helpers import BIN, assert_same_geometry, run
from stunet.cli.train import launch_from_environment, weights_digest

DATASET = "990"
TRAINER = "STUNetTrainer_small_smoke"
DIGEST = re.compile(r"stunet-train: rank (\d+)/(\d+) \(host \S+, local rank (\d+)\) weights sha256 ([0-9a-f]{64})")


def torchrun(torchrun_args: list[str], train_args: list[str], env: dict, timeout: float = 600) -> subprocess.Popen:
    """Start ``torchrun ... stunet-train ...`` in its own process group (so that a timeout ends its workers too)."""
    return subprocess.Popen([str(BIN / "torchrun"), *torchrun_args, str(BIN / "stunet-train"), *train_args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s\n{out[-4000:]}")
    if process.returncode != 0:
        raise AssertionError(f"torchrun exited {process.returncode}\n{out[-6000:]}")
    return out


def digests(log: str) -> dict[int, tuple[int, int, str]]:
    """rank -> (world size, local rank, weights digest), from the lines stunet-train prints."""
    return {int(r): (int(w), int(lr), d) for r, w, lr, d in DIGEST.findall(log)}


def fold_folder(root, fold: int):
    return root / "results" / "Dataset990_STUNetSynthetic" / f"{TRAINER}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def test_two_ranks_train_once_resume_and_predict(planned_dataset, tmp_path):
    root, folder, env = planned_dataset
    train = [DATASET, "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    log = finish(torchrun(["--standalone", "--nnodes=1", "--nproc_per_node=2"], train, env))
    ranks = digests(log)
    assert set(ranks) == {0, 1} and {w for w, _, _ in ranks.values()} == {2}
    assert ranks[0][2] == ranks[1][2] and "weights identical on all 2 ranks" in log

    fold = fold_folder(root, 0)
    # the plans' batch of 2, split: rank 0's trainer records its own batch (nnU-Net's "worker N batch_size B" lines
    # are printed piece by piece, so the two ranks' pieces can interleave in the shared output)
    assert json.loads((fold / "debug.json").read_text())["batch_size"] == "1"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert weights_digest(checkpoint["network_weights"]) == ranks[0][2]  # what rank 0 saved is what both hold
    assert checkpoint["trainer_name"] == TRAINER and checkpoint["current_epoch"] == 2
    assert len(list(fold.glob("training_log_*.txt"))) == 1  # rank 0 alone writes the log
    assert (fold / "validation" / "summary.json").is_file()  # both ranks validate, rank 0 sums up

    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", DATASET, "-c", "3d_fullres",
         "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"], env)
    for image in sorted((folder / "imagesTs").glob("*_0000.nii.gz")):
        assert_same_geometry(out / image.name.replace("_0000.nii.gz", ".nii.gz"), image)

    # --c: make the final checkpoint the one of an aborted training after epoch 0, then continue on two ranks
    checkpoint["current_epoch"] = 1
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    log = finish(torchrun(["--standalone", "--nnodes=1", "--nproc_per_node=2"], train + ["--c"], env))
    epochs = re.findall(r"Epoch (\d+) *$", log, re.M)
    assert epochs and set(epochs) == {"1"}  # epoch 0 is not trained again
    resumed = digests(log)
    assert resumed[0][2] == resumed[1][2] != ranks[0][2]
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and weights_digest(final["network_weights"]) == resumed[0][2]
    assert not (fold / "checkpoint_latest.pth").exists()

    # without a launcher stunet-train is nnUNetv2_train: validation only, in one process
    log = run(["stunet-train", *train, "--val"], env)
    assert "stunet-train: rank" not in log and "Mean Validation Dice" in log


@pytest.mark.slow
def test_two_nodes_on_one_host(planned_dataset):
    """Two torchrun invocations, node ranks 0 and 1 of --nnodes=2, one process each, same rendezvous: global ranks
    0 and 1 are both local rank 0 of their node."""
    root, _, env = planned_dataset
    port = str(find_free_network_port())
    train = [DATASET, "3d_fullres", "1", "-tr", TRAINER, "-device", "cpu"]
    common = ["--nnodes=2", "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}"]
    nodes = [torchrun(common + [f"--node_rank={n}"], train, env) for n in (0, 1)]
    logs = [finish(node) for node in nodes]
    node0, node1 = digests(logs[0]), digests(logs[1])
    assert set(node0) == {0} and set(node1) == {1}
    assert node0[0][:2] == node1[1][:2] == (2, 0)  # world size 2, local rank 0 on each node
    assert node0[0][2] == node1[1][2] and "weights identical on all 2 ranks" in logs[0]
    checkpoint = torch.load(fold_folder(root, 1) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert weights_digest(checkpoint["network_weights"]) == node0[0][2]


def test_launch_environment():
    assert launch_from_environment({}) is None
    assert launch_from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is None  # one process: nnUNetv2_train
    launch = launch_from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                      "MASTER_ADDR": "node0", "MASTER_PORT": "29500"})
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (3, 4, 1, 2)
    try:
        launch_from_environment({"WORLD_SIZE": "2", "RANK": "0"})
    except SystemExit as e:
        assert "LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set" in str(e)
    else:
        raise AssertionError("an incomplete launch environment must be refused")


def test_num_gpus_is_refused_under_a_launcher(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "1"}
    done = subprocess.run([sys.executable, "-m", "stunet.cli.train", "990", "3d_fullres", "0", "-num_gpus", "2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "leave -num_gpus out" in done.stderr


def test_nnunets_one_machine_assumptions_are_lifted_in_scope(monkeypatch):
    """In a one-process gloo group: nnU-Net's DDP call with device_ids=[global rank] builds a DDP of a CPU module,
    and nnU-Net's stock pretrained loader maps onto this process's device; both only inside stunet-train's scope."""
    import nnunetv2.run.load_pretrained_weights as stock_loader
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from stunet.cli.train import ddp_on_own_device, stock_loader_on

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_network_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with ddp_on_own_device():
            wrapped = trainer_module.DDP(torch.nn.Linear(2, 2), device_ids=[3])
        assert type(wrapped) is DistributedDataParallel
        assert trainer_module.DDP is DistributedDataParallel
    finally:
        dist.destroy_process_group()
    with stock_loader_on(torch.device("cpu")):
        assert not stock_loader.dist.is_initialized()  # torch.load as in one process
    with stock_loader_on(torch.device("cuda", 2)):
        assert stock_loader.dist.is_initialized() and stock_loader.dist.get_rank() == 2  # cuda:<LOCAL_RANK>
    assert stock_loader.dist is dist
