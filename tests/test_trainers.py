"""STU-Net trainers without training: the committed list of names, composition of name parts, options and where they
come from, the -pretrained_weights dispatch, bf16 scoped to the trainer's own calls, the decoder view."""
import gc
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import stunet
from stunet.nnunet.env import trainer_folder
from stunet.nnunet_plugins import stunet_trainers
from stunet.nnunet.trainer import (FineTune, MirroringOnly, STUNetTrainer, describe_trainer, render_trainer_module, trainer_variants)


def test_the_committed_trainer_module_lists_every_name_of_the_grammar():
    committed = (trainer_folder() / "stunet_trainers.py").read_text()
    assert committed == render_trainer_module(), "run: python -m stunet.nnunet.trainer > nnunet_plugins/stunet_trainers.py"
    names = [name for name, _, _ in trainer_variants()]
    assert len(names) == len(set(names)) == 320
    for name in names:
        assert f"class {name}(" in committed  # greppable
        assert issubclass(getattr(stunet_trainers, name), STUNetTrainer)
        assert describe_trainer(name)


def test_name_parts_compose():
    trainer = stunet_trainers.STUNetTrainer_large_ft_mirroronly_bf16_quick
    assert issubclass(trainer, FineTune) and issubclass(trainer, MirroringOnly)
    assert trainer.model_name == "stunet_large" and trainer.precision == "bf16" and trainer.requires_pretrained
    assert trainer.merged_settings() == {"initial_lr": 1e-3, "num_epochs": 5, "num_iterations_per_epoch": 20,
                                         "num_val_iterations_per_epoch": 5}
    assert stunet_trainers.STUNetTrainer_small_ft_heads.trainable == "heads"
    assert "fine-tuning" in describe_trainer("STUNetTrainer_base_ft_mirroronly")


def _fake_trainer(trainer_class, configuration: dict):
    """An object with what STUNetTrainer._options reads, named like ``trainer_class``."""
    fake = type(trainer_class.__name__, (), {})()
    fake.precision, fake.trainable = trainer_class.precision, trainer_class.trainable
    fake.body_lr_factor = trainer_class.body_lr_factor
    fake.configuration_manager = SimpleNamespace(configuration=configuration)
    return fake


def test_options_come_from_name_and_plans_and_the_environment_only_overrides(monkeypatch):
    for variable in ("STUNET_PRECISION", "STUNET_ACTIVATION_CHECKPOINTING", "STUNET_LABEL_MAP",
                     "STUNET_TRUST_CHECKPOINT"):
        monkeypatch.delenv(variable, raising=False)
    trainer_class = stunet_trainers.STUNetTrainer_small_bf16
    plans = {"architecture": {"network_class_name": "stunet.nnunet.network.STUNetFromPlans",
                              "arch_kwargs": {"activation_checkpointing": "block"}}, "stunet_label_map": "amos22"}
    fake = _fake_trainer(trainer_class, plans)
    fake.configuration_manager.network_arch_class_name = "stunet.nnunet.network.STUNetFromPlans"
    options = STUNetTrainer._options(fake)
    assert options["precision"] == ("bf16", "trainer STUNetTrainer_small_bf16") and options["activation_checkpointing"] == ("block", "plans")
    assert options["label_map"] == ("amos22", "plans") and options["trust_checkpoint"] == (False, "default")
    monkeypatch.setenv("STUNET_PRECISION", "fp16")
    monkeypatch.setenv("STUNET_ACTIVATION_CHECKPOINTING", "stage")
    options = STUNetTrainer._options(fake)
    assert options["precision"] == ("fp16", "environment")
    assert options["activation_checkpointing"] == ("stage", "environment")
    monkeypatch.setenv("STUNET_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp16 or bf16"):
        STUNetTrainer._options(fake)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_bf16_autocast_is_scoped_to_the_trainers_own_calls():
    fake = SimpleNamespace(stunet_options={"precision": ("bf16", "trainer")}, device=torch.device("cuda"))
    before = torch.get_autocast_dtype("cuda")
    context = STUNetTrainer._autocast(fake)
    assert context.fast_dtype == torch.bfloat16
    assert torch.get_autocast_dtype("cuda") == before == torch.float16  # nothing process-wide was changed
    fake.device = torch.device("cpu")
    assert not isinstance(STUNetTrainer._autocast(fake), torch.autocast)  # CPU training runs in fp32, as nnU-Net's


class _Stock(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)


def test_pretrained_weights_dispatch_leaves_other_trainers_on_nnunets_loader(tmp_path):
    import nnunetv2.run.run_training as run_training
    from stunet.nnunet.finetune import route_pretrained_loading

    calls = []

    class Trainer:
        def __init__(self):
            self.network = stunet.create_model("stunet_small", depths=[1, 1], widths=[2, 2], strides=[2],
                                               num_classes=2)

        def load_pretrained_weights(self, fname):
            calls.append(fname)

    trainer = Trainer()
    ours = trainer.network
    route_pretrained_loading(trainer)
    route_pretrained_loading(trainer)  # idempotent
    loader = run_training.load_pretrained_weights
    assert loader.stunet_dispatch and not getattr(loader.stock, "stunet_dispatch", False)
    loader(ours, "weights.model")
    assert calls == ["weights.model"]
    # a stock trainer's network in the same process: nnU-Net's own loader copies its v2 checkpoint
    source, target = _Stock(), _Stock()
    torch.save({"network_weights": source.state_dict()}, tmp_path / "checkpoint_final.pth")
    loader(target, str(tmp_path / "checkpoint_final.pth"))
    assert torch.equal(target.layer.weight, source.layer.weight) and calls == ["weights.model"]
    del ours, trainer
    gc.collect()
    from stunet.nnunet.finetune import _TRAINERS
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
