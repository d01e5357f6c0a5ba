"""The nnU-Net side of the trainers without training: plan-to-network mapping, deep supervision through nnU-Net's
wrappers (DDP, torch.compile), trainer discovery in a fresh interpreter."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch.nn.parallel import DistributedDataParallel

from stunet.nnunet.network import build_for_configuration, deep_supervision_scales, strides_for_plans
from stunet.nnunet_plugins import stunet_trainers

SIZES = ["small", "base", "large", "huge"]


def test_plans_with_fewer_downsamplings_are_padded_with_unit_strides():
    plans = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert strides_for_plans(plans) == [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]


def test_plans_with_more_downsamplings_keep_the_first_five():
    plans = [[1, 1]] + [[2, 2]] * 7
    assert strides_for_plans(plans) == [[2, 2]] * 5


def test_plans_with_a_strided_stem_are_refused():
    with pytest.raises(ValueError, match="strided first stage"):
        strides_for_plans([[2, 2, 2], [2, 2, 2]])


@pytest.mark.parametrize("pools", [[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                                   [[1, 1, 1], [2, 2, 2], [2, 2, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 2]]])
def test_deep_supervision_scales_match_the_network_outputs(pools):
    config = SimpleNamespace(pool_op_kernel_sizes=pools)
    model = build_for_configuration("stunet_small", config, 1, 3, True, widths=[4, 4, 8, 8, 8, 8])
    patch = (32, 32, 32)
    outputs = model(torch.zeros(1, 1, *patch))
    scales = deep_supervision_scales(strides_for_plans(pools))
    assert [tuple(o.shape[2:]) for o in outputs] == [tuple(int(p * s) for p, s in zip(patch, sc)) for sc in scales]


@pytest.mark.parametrize("size", SIZES)
def test_each_trainer_builds_its_preset_with_nnunets_signature(size):
    trainer = getattr(stunet_trainers, f"STUNetTrainer_{size}")
    config = SimpleNamespace(pool_op_kernel_sizes=[[1, 1, 1]] + [[2, 2, 2]] * 5)
    with torch.device("meta"):
        net = trainer.build_network_architecture(None, config, 1, 105, enable_deep_supervision=False)
    expected = {"small": 14_596_941, "base": 58_262_669, "large": 440_302_605, "huge": 1_457_326_221}[size]
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net.deep_supervision is False
    for variant in ("ft", "smoke", "quick"):
        assert getattr(stunet_trainers, f"STUNetTrainer_{size}_{variant}").model_name == f"stunet_{size}"


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


WRAPPERS = {  # name: (wrapper, run a forward pass: compiling on the CPU would take minutes)
    "plain": (lambda m: m, True),
    "compile": (torch.compile, False),
    "ddp": (DistributedDataParallel, True),
    "ddp+compile": (lambda m: DistributedDataParallel(torch.compile(m)), False),
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_deep_supervision_toggle_reaches_the_network_through_wrappers(process_group, wrapper):
    """nnU-Net's own set_deep_supervision_enabled, on the wrappers it uses for -num_gpus and nnUNet_compile."""
    wrap, run_forward = WRAPPERS[wrapper]
    config = SimpleNamespace(pool_op_kernel_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2]])
    net = build_for_configuration("stunet_small", config, 1, 2, True, widths=[4] * 6)
    wrapped = wrap(net)
    trainer = SimpleNamespace(is_ddp=wrapper.startswith("ddp"), network=wrapped)
    nnUNetTrainer.set_deep_supervision_enabled(trainer, False)
    assert net.deep_supervision is False
    if run_forward:
        assert wrapped(torch.randn(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    nnUNetTrainer.set_deep_supervision_enabled(trainer, True)
    assert net.deep_supervision is True
    if run_forward:
        assert len(wrapped(torch.randn(1, 1, 8, 8, 8))) == 5  # one output per decoder stage


def test_trainers_found_by_nnunet_in_a_fresh_interpreter():
    """No nnUNet_extTrainer in the environment: the installed start-up hook sets it."""
    code = ("import os; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "print(os.environ['nnUNet_extTrainer']); "
            "print(*[f(f'STUNetTrainer_{s}{v}').__name__ for s in ('small','base','large','huge') "
            "for v in ('', '_ft', '_smoke', '_quick')])")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith("nnunet_plugins")
    assert "STUNetTrainer_huge_quick" in out.stdout.split()


@pytest.mark.parametrize("value, mode", [("block", "block"), ("stage", "stage"), ("1", "stage"), ("", False)])
def test_activation_checkpointing_is_selected_through_the_environment(monkeypatch, value, mode):
    monkeypatch.setenv("STUNET_ACTIVATION_CHECKPOINTING", value)
    config = SimpleNamespace(pool_op_kernel_sizes=[[1, 1, 1]] + [[2, 2, 2]] * 5)
    with torch.device("meta"):
        net = stunet_trainers.STUNetTrainer_large.build_network_architecture(None, config, 1, 3, True)
    assert net.activation_checkpointing == mode
    monkeypatch.setenv("STUNET_ACTIVATION_CHECKPOINTING", "everything")
    with pytest.raises(ValueError, match="stage or block"):
        stunet_trainers.STUNetTrainer_large.build_network_architecture(None, config, 1, 3, True)
