"""nnU-Net v2 trainers of STU-Net: every name ``nnUNetv2_train -tr`` accepts is a class below, written by hand.

As nnU-Net's own trainer variants, each is a small subclass that changes one thing of the trainer it extends. The
behaviour lives in stunet/nnunet/trainer.py: ``STUNetTrainer`` and the parts ``FineTune``, ``FineTunePaper``,
``FineTuneFrozenEncoder``, ``FineTuneHeads`` (what trains, at which learning rate), ``MirroringOnly`` (augmentation),
``Epochs4000``, ``Quick``, ``Smoke`` (schedule). ``stunet-info --trainers`` lists what each name changes.

Precision is in no name: ``STUNET_PRECISION=bf16`` trains any of them in bfloat16 on CUDA (default fp16). Another
combination of the parts is a subclass in a trainer folder of your own on ``nnUNet_extTrainer``, for example::

    class MyTrainer_large_ft_mirroronly(MirroringOnly, STUNetTrainer_large_ft):
        pass

A name not defined here is no trainer: ``nnUNetv2_train`` stops with nnU-Net's own error.
"""
# flake8: noqa: E701
from stunet.nnunet import trainer as behaviour
from stunet.nnunet.trainer import (Epochs4000, FineTune, FineTuneFrozenEncoder, FineTuneHeads, FineTunePaper,
                                   MirroringOnly, Quick, Smoke)


class STUNetTrainer(behaviour.STUNetTrainer):
    """The STU-Net that STU-Net plans describe, any size (refuses nnU-Net's own plans)."""


# -- from scratch: the STU-Net of one size (its published layout on nnU-Net's own plans) -----------------------------
class STUNetTrainer_small(STUNetTrainer): model_name = "stunet_small"
class STUNetTrainer_base(STUNetTrainer): model_name = "stunet_base"
class STUNetTrainer_large(STUNetTrainer): model_name = "stunet_large"
class STUNetTrainer_huge(STUNetTrainer): model_name = "stunet_huge"


# -- fine-tuning from -pretrained_weights (docs/finetuning.md) -------------------------------------------------------
class STUNetTrainer_small_ft(FineTune, STUNetTrainer_small): pass
class STUNetTrainer_small_ft_paper(FineTunePaper, STUNetTrainer_small): pass
class STUNetTrainer_small_ft_frozen_encoder(FineTuneFrozenEncoder, STUNetTrainer_small): pass
class STUNetTrainer_small_ft_heads(FineTuneHeads, STUNetTrainer_small): pass

class STUNetTrainer_base_ft(FineTune, STUNetTrainer_base): pass
class STUNetTrainer_base_ft_paper(FineTunePaper, STUNetTrainer_base): pass
class STUNetTrainer_base_ft_frozen_encoder(FineTuneFrozenEncoder, STUNetTrainer_base): pass
class STUNetTrainer_base_ft_heads(FineTuneHeads, STUNetTrainer_base): pass

class STUNetTrainer_large_ft(FineTune, STUNetTrainer_large): pass
class STUNetTrainer_large_ft_paper(FineTunePaper, STUNetTrainer_large): pass
class STUNetTrainer_large_ft_frozen_encoder(FineTuneFrozenEncoder, STUNetTrainer_large): pass
class STUNetTrainer_large_ft_heads(FineTuneHeads, STUNetTrainer_large): pass

class STUNetTrainer_huge_ft(FineTune, STUNetTrainer_huge): pass
class STUNetTrainer_huge_ft_paper(FineTunePaper, STUNetTrainer_huge): pass
class STUNetTrainer_huge_ft_frozen_encoder(FineTuneFrozenEncoder, STUNetTrainer_huge): pass
class STUNetTrainer_huge_ft_heads(FineTuneHeads, STUNetTrainer_huge): pass


# -- pretraining as the released models were trained: mirroring only, 4000 epochs (docs/pretraining.md) ---------------
class STUNetTrainer_small_mirroronly_ep4k(Epochs4000, MirroringOnly, STUNetTrainer_small): pass
class STUNetTrainer_base_mirroronly_ep4k(Epochs4000, MirroringOnly, STUNetTrainer_base): pass
class STUNetTrainer_large_mirroronly_ep4k(Epochs4000, MirroringOnly, STUNetTrainer_large): pass
class STUNetTrainer_huge_mirroronly_ep4k(Epochs4000, MirroringOnly, STUNetTrainer_huge): pass


# -- short schedules: _quick 5 epochs x 20 iterations (demos), _smoke 2 x 5 (does the pipeline run?) -----------------
class STUNetTrainer_small_quick(Quick, STUNetTrainer_small): pass
class STUNetTrainer_base_quick(Quick, STUNetTrainer_base): pass
class STUNetTrainer_large_quick(Quick, STUNetTrainer_large): pass
class STUNetTrainer_huge_quick(Quick, STUNetTrainer_huge): pass

class STUNetTrainer_small_smoke(Smoke, STUNetTrainer_small): pass
class STUNetTrainer_base_smoke(Smoke, STUNetTrainer_base): pass
class STUNetTrainer_large_smoke(Smoke, STUNetTrainer_large): pass
class STUNetTrainer_huge_smoke(Smoke, STUNetTrainer_huge): pass

# the fine-tuning and pretraining recipes of STU-Net-S in 2 epochs (the end-to-end tests and the GPU proof)
class STUNetTrainer_small_ft_smoke(Smoke, STUNetTrainer_small_ft): pass
class STUNetTrainer_small_ft_frozen_encoder_smoke(Smoke, STUNetTrainer_small_ft_frozen_encoder): pass
class STUNetTrainer_small_mirroronly_smoke(Smoke, STUNetTrainer_small_mirroronly_ep4k): pass
