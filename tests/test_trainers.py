"""STU-Net trainers without training: the hand-written names (each a class line of nnunet_plugins/stunet_trainers.py),
how parts compose, any other name left to nnU-Net's own lookup and its error, options and where they come from, bf16 autocast scoped to the trainer's own calls, the -pretrained_weights route
(scoped: nothing stays patched), the decoder view."""
import ast
import gc
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import stunet
from stunet.errors import CheckpointError
from stunet.nnunet.env import trainer_folder
from stunet.nnunet.trainer import FineTune, MirroringOnly, STUNetTrainer, Smoke, describe_trainer
from stunet.nnunet_plugins import stunet_trainers

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = trainer_folder() / "stunet_trainers.py"
TRAINERS = {name: value for name, value in vars(stunet_trainers).items()
            if isinstance(value, type) and issubclass(value, STUNetTrainer)}


def test_every_trainer_name_is_a_class_line_of_the_plugin_file():
    source = PLUGIN.read_text()
    class_lines = {node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    assert set(TRAINERS) == class_lines  # nothing generated, nothing imported under a trainer's name
    for name in TRAINERS:
        assert re.search(rf"^class {name}\(", source, re.MULTILINE), name  # greppable
        assert describe_trainer(TRAINERS[name])
    assert 20 <= len(TRAINERS) <= 40
    assert not [name for name in TRAINERS if "bf16" in name]  # precision is STUNET_PRECISION, not a name


def test_the_documented_names_are_there():
    sizes = ("small", "base", "large", "huge")
    for size in sizes:
        for suffix in ("", "_ft", "_ft_paper", "_ft_frozen_encoder", "_ft_heads", "_mirroronly_ep4k"):
            assert f"STUNetTrainer_{size}{suffix}" in TRAINERS
    assert "STUNetTrainer" in TRAINERS


# every STUNetTrainer_<name> the repository mentions (a results folder's first part), except in this file
MENTIONS = sorted(p for pattern in ("README.md", "docs/*.md", "stunet/**/*.py", "benchmarks/*.py", "tests/*.py")
                  for p in ROOT.glob(pattern) if p.name != Path(__file__).name)
STALE: dict[str, str] = {}  # path -> why it may name a trainer that does not exist (a strict xfail: fixed, it fails)


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=STALE[str(
    p.relative_to(ROOT))])) if str(p.relative_to(ROOT)) in STALE else p for p in MENTIONS],
    ids=lambda p: str(p.relative_to(ROOT)))
def test_the_repository_names_only_trainers_that_exist(path):
    """Docs, commands, benchmarks and tests name existing trainers."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for name in re.findall(r"\bSTUNetTrainer_[a-z][a-z0-9_]*", line):
            name = name.split("__")[0]
            assert name in TRAINERS, f"{path}:{number} names {name}, which is no trainer"


def test_parts_compose():
    trainer = stunet_trainers.STUNetTrainer_small_ft_smoke
    assert issubclass(trainer, FineTune) and issubclass(trainer, Smoke) and trainer.requires_pretrained
    assert trainer.model_name == "stunet_small" and trainer.__mro__[1] is Smoke  # one thing over its parent
    assert trainer.merged_settings() == {"initial_lr": 1e-3, "num_epochs": 2, "num_iterations_per_epoch": 5,
                                         "num_val_iterations_per_epoch": 2}
    pretraining = stunet_trainers.STUNetTrainer_small_mirroronly_smoke  # the recipe, 2 epochs instead of 4000
    assert issubclass(pretraining, MirroringOnly) and pretraining.merged_settings()["num_epochs"] == 2
    assert stunet_trainers.STUNetTrainer_large_mirroronly_ep4k.merged_settings() == {"num_epochs": 4000}
    assert stunet_trainers.STUNetTrainer_small_ft_heads.trainable == "heads"
    assert "fine-tuning" in describe_trainer(stunet_trainers.STUNetTrainer_base_ft)
    assert "4000" not in describe_trainer(pretraining) and "mirroring" in describe_trainer(pretraining)
    for name, trainer in TRAINERS.items():
        size = name.split("_")[1] if "_" in name else None
        assert trainer.model_name == (f"stunet_{size}" if size else None), name


def test_any_other_name_is_left_to_nnunets_lookup_and_its_error(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_folder()))
    assert recursive_find_trainer_class_by_name("STUNetTrainer_large_ft").__name__ == "STUNetTrainer_large_ft"
    for name in ("STUNetTrainer_large_ft_bf16", "STUNetTrainer_huge_ep4k"):
        assert not hasattr(stunet_trainers, name)
        with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer"):
            recursive_find_trainer_class_by_name(name)


def test_stunet_info_lists_the_trainers_and_refuses_another_name(capsys):
    from stunet.cli import info

    with pytest.raises(SystemExit) as stop:
        info.main(["--trainers", "STUNetTrainer_large_ft_bf16"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "stunet-info: error: no STU-Net trainer called 'STUNetTrainer_large_ft_bf16'\n"
    info.main(["--trainers"])
    listing = capsys.readouterr().out
    assert f"{len(TRAINERS)} STU-Net trainers" in listing and "STUNET_PRECISION=bf16" in listing
    rows = [line.split()[0] for line in listing.splitlines() if line.startswith("STUNetTrainer")]
    assert rows == list(TRAINERS)


def _fake_trainer(trainer_class, configuration: dict):
    """An object with what STUNetTrainer._options reads, named like ``trainer_class``."""
    fake = type(trainer_class.__name__, (), {})()
    fake.trainable, fake.body_lr_factor = trainer_class.trainable, trainer_class.body_lr_factor
    fake.configuration_manager = SimpleNamespace(configuration=configuration)
    return fake


def test_options_come_from_name_and_plans_and_the_settings_override(monkeypatch):
    for variable in ("STUNET_PRECISION", "STUNET_ACTIVATION_CHECKPOINTING", "STUNET_LABEL_MAP",
                     "STUNET_TRUST_CHECKPOINT"):
        monkeypatch.delenv(variable, raising=False)
    trainer_class = stunet_trainers.STUNetTrainer_small_ft_heads
    plans = {"architecture": {"network_class_name": "stunet.nnunet.network.STUNetFromPlans",
                              "arch_kwargs": {"activation_checkpointing": "block"}}, "stunet_label_map": "amos22"}
    fake = _fake_trainer(trainer_class, plans)
    fake.configuration_manager.network_arch_class_name = "stunet.nnunet.network.STUNetFromPlans"
    fake.device = torch.device("cuda")  # the precision in force depends on the device (tests/test_messages.py: cpu)
    options = STUNetTrainer._options(fake)
    assert options["precision"] == ("fp16", "default") and options["activation_checkpointing"] == ("block", "plans")
    assert options["label_map"] == ("amos22", "plans") and options["trust_checkpoint"] == (False, "default")
    assert options["trainable"] == ("heads", "trainer STUNetTrainer_small_ft_heads")
    monkeypatch.setenv("STUNET_PRECISION", "BF16")
    monkeypatch.setenv("STUNET_ACTIVATION_CHECKPOINTING", "stage")
    monkeypatch.setenv("STUNET_LABEL_MAP", "btcv")
    monkeypatch.setenv("STUNET_TRUST_CHECKPOINT", "Yes")
    options = STUNetTrainer._options(fake)
    assert options["precision"] == ("bf16", "STUNET_PRECISION")
    assert options["activation_checkpointing"] == ("stage", "STUNET_ACTIVATION_CHECKPOINTING")
    assert options["label_map"] == ("btcv", "STUNET_LABEL_MAP")
    assert options["trust_checkpoint"] == (True, "STUNET_TRUST_CHECKPOINT")
    monkeypatch.setenv("STUNET_TRUST_CHECKPOINT", "perhaps")  # one yes/no parser: a typo is an error
    with pytest.raises(ValueError, match="STUNET_TRUST_CHECKPOINT"):
        STUNetTrainer._options(fake)
    monkeypatch.setenv("STUNET_TRUST_CHECKPOINT", "0")
    monkeypatch.setenv("STUNET_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp16 or bf16"):
        STUNetTrainer._options(fake)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_bf16_autocast_is_scoped_to_the_trainers_own_calls():
    """Inside the trainer's context, the autocast nnU-Net opens in train_step (``autocast('cuda', enabled=True)``, no
    dtype) runs in bfloat16; after it, nothing is left of it. On the CPU nothing is entered at all."""
    fake = SimpleNamespace(stunet_options={"precision": ("bf16", "STUNET_PRECISION")}, device=torch.device("cuda"))
    assert torch.get_autocast_dtype("cuda") == torch.float16 and not torch.is_autocast_enabled("cuda")
    with STUNetTrainer._autocast(fake):
        assert torch.get_autocast_dtype("cuda") == torch.bfloat16
        assert torch.is_autocast_enabled("cuda") == torch.cuda.is_available()
        with torch.autocast("cuda", enabled=True) as nnunets:  # as nnUNetTrainer.train_step enters it
            assert nnunets.fast_dtype == torch.bfloat16
            if torch.cuda.is_available():
                a = torch.ones(8, 8, device="cuda")
                assert (a @ a).dtype == torch.bfloat16
    assert torch.get_autocast_dtype("cuda") == torch.float16 and not torch.is_autocast_enabled("cuda")
    with torch.autocast("cuda", enabled=True) as later:  # nnU-Net's own fp16 outside the trainer's calls
        assert later.fast_dtype == torch.float16
    fake.stunet_options = {"precision": ("fp16", "default")}
    with STUNetTrainer._autocast(fake):
        assert torch.get_autocast_dtype("cuda") == torch.float16
    fake.device, fake.stunet_options = torch.device("cpu"), {"precision": ("bf16", "STUNET_PRECISION")}
    before = torch.get_autocast_dtype("cpu")
    with STUNetTrainer._autocast(fake):  # CPU training runs in float32, as nnU-Net's
        assert not torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == before
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.float32


class _Stock(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)


class _Trainer:
    """What the route uses of a trainer: its network and its loader."""

    def __init__(self, calls, fail=False):
        self.network = stunet.create_model("stunet_small", depths=[1, 1], widths=[2, 2], strides=[2], num_classes=2)
        self.calls, self.fail = calls, fail

    def load_pretrained_weights(self, fname):
        self.calls.append(fname)
        if self.fail:
            raise CheckpointError(f"{fname}: not a checkpoint")


def test_pretrained_weights_route_reaches_the_trainer_and_leaves_other_networks_to_nnunet(tmp_path):
    import nnunetv2.run.run_training as run_training
    from stunet.nnunet.finetune import _TRAINERS, pretrained_loading_routed

    stock, calls = run_training.load_pretrained_weights, []
    trainer = _Trainer(calls)
    with pretrained_loading_routed(trainer):
        loader = run_training.load_pretrained_weights
        assert loader is not stock
        loader(trainer.network, "weights.model")
        assert calls == ["weights.model"]
        # a stock trainer's network in the same process: nnU-Net's own loader copies its v2 checkpoint
        source, target = _Stock(), _Stock()
        torch.save({"network_weights": source.state_dict()}, tmp_path / "checkpoint_final.pth")
        loader(target, str(tmp_path / "checkpoint_final.pth"))
        assert torch.equal(target.layer.weight, source.layer.weight) and calls == ["weights.model"]
    assert run_training.load_pretrained_weights is stock and len(_TRAINERS) == 0
    with pytest.raises(KeyError):
        with pretrained_loading_routed(trainer):
            raise KeyError("anything")
    assert run_training.load_pretrained_weights is stock  # restored in finally


def test_the_route_a_trainer_opens_closes_after_the_load_even_a_failed_one():
    """``initialize`` opens the route (nnUNetv2_train loads right after it); the load, or the trainer's next step,
    closes it: nothing of it stays patched."""
    import nnunetv2.run.run_training as run_training
    from stunet.nnunet.finetune import _TRAINERS, close_pretrained_route, open_pretrained_route

    stock, calls = run_training.load_pretrained_weights, []
    trainer = _Trainer(calls)
    open_pretrained_route(trainer)
    run_training.load_pretrained_weights(trainer.network, "weights.model", verbose=True)
    assert calls == ["weights.model"] and run_training.load_pretrained_weights is stock

    failing = _Trainer(calls, fail=True)
    open_pretrained_route(failing)
    with pytest.raises(SystemExit, match="nnUNetv2_train: error: -pretrained_weights broken.pth: not a checkpoint"):
        run_training.load_pretrained_weights(failing.network, "broken.pth")
    assert run_training.load_pretrained_weights is stock

    first, second = _Trainer(calls), _Trainer(calls)  # two trainers in one process: routes nest
    open_pretrained_route(first)
    open_pretrained_route(second)
    close_pretrained_route(first)
    run_training.load_pretrained_weights(second.network, "second.model")
    assert calls[-1] == "second.model" and run_training.load_pretrained_weights is stock
    close_pretrained_route(second)  # already closed: nothing to do

    # the trainer's next step closes a route no load came through (a fine-tuning trainer without weights stops)
    scratch = _Trainer(calls)
    scratch.__dict__.update(requires_pretrained=True, pretrained_report=None, current_epoch=0,
                            model_name="stunet_small")
    open_pretrained_route(scratch)
    with pytest.raises(SystemExit, match="add -pretrained_weights"):  # one line, no traceback
        STUNetTrainer.on_train_start(scratch)
    assert run_training.load_pretrained_weights is stock
    del trainer, failing, first, second, scratch
    gc.collect()
    assert len(_TRAINERS) == 0  # registered weakly: no network outlives its trainer here


def test_decoder_view_holds_the_flag_and_only_the_decoders_parameters():
    net = stunet.create_model("stunet_small", depths=[1, 1, 1], widths=[2, 4, 4], strides=[2, 2], num_classes=2)
    for p in net.decoder.parameters():
        p.requires_grad_(False)
    encoder = [n for n, p in net.named_parameters() if n.startswith("conv_blocks_context.")]
    assert encoder and all(p.requires_grad for n, p in net.named_parameters() if n in encoder)
    decoder_names = {n for n, _ in net.decoder.named_parameters()}
    assert decoder_names == {n for n, _ in net.named_parameters() if not n.startswith("conv_blocks_context.")}
    net.decoder.deep_supervision = False
    assert net.deep_supervision is False
    with pytest.raises(AttributeError):
        net.decoder.something = 1
