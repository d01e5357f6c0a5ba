"""The nnU-Net v2 side: the network adapter nnU-Net builds from plans (:mod:`.network`), plans for the released
models (:mod:`.plans`) and the STU-Net planner (:mod:`.planner`), the trainer behaviour (:mod:`.trainer`,
:mod:`.finetune`; the ``-tr`` names are in ``stunet.nnunet_plugins``), nnU-Net's environment (:mod:`.env`), conversion
of released checkpoints to nnU-Net model folders (:mod:`.convert`), and the datasets the commands build
(:mod:`.totalseg`, :mod:`.synthetic`).

May import: nnunetv2, :mod:`stunet.clinical`, :mod:`stunet.weights`, :mod:`stunet.models` and the base modules.
"""
