"""What a prediction needs, loaded once: networks (one per fold), nnU-Net's plans and the labels, from an nnU-Net v2
model folder or a released model. Both load their weights through :func:`stunet.weights.loading.load_pretrained`, which
also gives the test-time mirroring axes (the same for a released model and its converted model folder).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from stunet.errors import CheckpointError
from stunet.labels import label_names_of
from stunet.models.network import STUNet
from stunet.weights.loading import load_pretrained as load_weights, read_weights
from stunet.weights.plain import read_json_file


@dataclass
class Model:
    """What a prediction needs: networks (one per fold), nnU-Net's plans for one configuration, and the labels."""

    networks: list[STUNet]
    plans: dict
    configuration: str
    dataset_json: dict
    mirror_axes: tuple[int, ...] | None = None
    description: str = ""
    checkpoints: list = field(default_factory=list)  # the files the weights came from (provenance.json)
    plans_manager: PlansManager = field(init=False)

    def __post_init__(self):
        self.plans_manager = PlansManager(self.plans)
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        self.num_input_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                               self.dataset_json)
        for network in self.networks:
            network.eval()
            network.deep_supervision = False

    @property
    def label_names(self) -> dict[int, str]:
        return label_names_of(self.dataset_json, f"{self.description or 'the model'}: dataset.json")


def _build_from_trainer(trainer_name: str, plans_manager: PlansManager, configuration: str, dataset_json: dict):
    from stunet.nnunet_plugins import stunet_trainers

    trainer = getattr(stunet_trainers, trainer_name, None)
    if trainer is None:  # nnU-Net's own, or a user's subclass in a folder of their nnUNet_extTrainer
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        try:
            trainer = recursive_find_trainer_class_by_name(trainer_name)
        except RuntimeError as e:
            raise ValueError(f"the model was trained with {trainer_name}, a trainer that is not installed here; put "
                             f"its module in nnU-Net's trainer folder (or a folder named in nnUNet_extTrainer) or "
                             f"predict with the nnU-Net that trained it") from e
    configuration_manager = plans_manager.get_configuration(configuration)
    network = trainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, False)
    if not isinstance(network, STUNet):
        raise ValueError(f"the model was trained with {trainer_name}, whose network is not an STU-Net; predict with "
                         f"nnUNetv2_predict_from_modelfolder instead")
    return network


def load_model_folder(folder: str | Path, folds: Sequence[str] | None = None,
                      checkpoint_name: str = "checkpoint_final.pth", trust: bool = False) -> Model:
    """An nnU-Net v2 trained model folder (plans.json, dataset.json, fold_*/checkpoint)."""
    folder = Path(folder)
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder}: not an nnU-Net model folder (no {required}); give the folder that "
                                    f"holds plans.json, dataset.json and fold_*/")
    for name in [*(folds or []), checkpoint_name]:  # they become paths inside the model folder
        if not name or "/" in str(name) or "\\" in str(name) or ".." in str(name):
            raise ValueError(f"{name!r}: folds and checkpoint names are plain names (0, 1, all, checkpoint_best.pth)")
    if not folds:
        folds = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint_name).is_file())
        if not folds:
            raise FileNotFoundError(f"{folder}: no fold_*/{checkpoint_name}; train a fold first or pass "
                                    f"--checkpoint-name")
    plans = read_json_file(folder / "plans.json", "plans.json")
    dataset_json = read_json_file(folder / "dataset.json", "dataset.json")
    if not isinstance(plans.get("configurations"), dict) or not plans["configurations"]:
        raise CheckpointError(f"{folder / 'plans.json'}: no 'configurations'; not nnU-Net v2 plans")
    if not isinstance(dataset_json.get("labels"), dict) or not dataset_json["labels"]:
        raise CheckpointError(f"{folder / 'dataset.json'}: no 'labels' object; not an nnU-Net v2 dataset.json")
    plans_manager = PlansManager(plans)
    networks, configuration, mirror_axes, trainer_name = [], None, None, None
    for fold in folds:
        weights = read_weights(folder / f"fold_{fold}" / checkpoint_name, trust=trust)
        if configuration is None:
            configuration, trainer_name = weights.checkpoint.configuration, weights.checkpoint.trainer_name
            if configuration not in plans["configurations"] or not trainer_name:
                raise CheckpointError(f"{weights.path}: trained as configuration {configuration!r} with trainer "
                                      f"{trainer_name!r}, which {folder / 'plans.json'} does not describe (plans: "
                                      f"{', '.join(plans['configurations'])})")
        network = _build_from_trainer(trainer_name, plans_manager, configuration, dataset_json)
        report = load_weights(network, None, weights, exact=True,
                              network=f"network of {trainer_name} for {folder / 'plans.json'}")
        if not networks:
            mirror_axes = report.mirror_axes
        networks.append(network)
    return Model(networks, plans, configuration, dataset_json, mirror_axes,
                 f"{folder} ({trainer_name}, {configuration}, folds {', '.join(map(str, folds))})",
                 [folder / f"fold_{fold}" / checkpoint_name for fold in folds])


def load_pretrained(name: str, checkpoint: str | Path | None = None, trust: bool = False) -> Model:
    """A released model (see stunet.weights.pretrained) from its checkpoint file, or without one from the cache (downloaded
    on first use, see stunet.weights.hub), with no nnU-Net folders involved."""
    from stunet.nnunet.plans import CONFIGURATION, dataset_json_for_pretrained, plans_for_pretrained
    from stunet.weights.factory import create_model
    from stunet.weights.pretrained import get_pretrained_config

    config = get_pretrained_config(name)
    network = create_model(config.name, pretrained=str(checkpoint) if checkpoint else True, trust_checkpoint=trust,
                           deep_supervision=False)
    config, report = network.pretrained_config, network.load_report  # completed from the companion plans
    missing = config.missing_for_prediction()
    if missing:
        raise CheckpointError(f"{config.name}: {', '.join(missing)} not known without the companion "
                              f"{config.companion_file} beside {report.path} (its nnU-Net v1 plans); put it there")
    plans = plans_for_pretrained(config, dataset_name=config.name, num_channels=config.in_channels)
    return Model([network], plans, CONFIGURATION, dataset_json_for_pretrained(config), report.mirror_axes,
                 f"{config.name} from {report.path}", [report.path])
