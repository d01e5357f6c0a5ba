"""Scaling, dimensionality, registry and input checks of the STU-Net builders (no reference material needed)."""
import pytest
import torch

import stunet
from stunet.complexity import measure

TINY = dict(depths=[1, 2, 1], widths=[4, 8, 8])


def _forward_backward(model, x):
    outputs = model(x)
    sum(o.float().mean() for o in outputs).backward()
    return outputs


def test_presets_registered_in_size_order():
    assert stunet.list_models() == ["stunet_small", "stunet_base", "stunet_large", "stunet_huge"]
    assert stunet.list_models("*large") == ["stunet_large"]


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="stunet_small, stunet_base, stunet_large, stunet_huge"):
        stunet.create_model("stunet_gigantic")


def test_2d_network_from_2d_strides_forward_backward():
    model = stunet.create_model("stunet_small", in_channels=3, num_classes=4, strides=[[2, 2], [2, 1]], **TINY)
    assert isinstance(model.conv_blocks_context[0][0].conv1, torch.nn.Conv2d)
    assert isinstance(model.conv_blocks_context[0][0].norm1, torch.nn.InstanceNorm2d)
    x = torch.randn(2, 3, 16, 12)
    outputs = _forward_backward(model, x)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, 16, 12), (2, 4, 8, 6)]
    assert all(p.grad is not None for p in model.parameters())


def test_anisotropic_strides_kernels_and_unit_stride():
    model = stunet.create_model("stunet_base", in_channels=2, num_classes=3, depths=[1, 1, 2, 1],
                                widths=[4, 6, 8, 8], strides=[[1, 2, 2], [2, 2, 2], [1, 1, 1]],
                                kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 1, 3]])
    assert model.config.total_stride == (2, 4, 4)
    assert model.conv_blocks_context[0][0].conv1.kernel_size == (1, 3, 3)
    assert model.conv_blocks_context[0][0].conv1.padding == (0, 1, 1)
    outputs = _forward_backward(model, torch.randn(1, 2, 4, 8, 12))
    assert [tuple(o.shape[2:]) for o in outputs] == [(4, 8, 12), (4, 4, 6), (2, 2, 3)]


def test_multipliers_and_stage_count_scale_a_preset():
    with torch.device("meta"):
        model = stunet.create_model("stunet_large", strides=[[2, 2, 2]] * 3, depth_multiplier=1.5,
                                    width_multiplier=0.5)
    assert model.config.depths == (3, 3, 3, 3)
    assert model.config.widths == (32, 64, 128, 256)
    with torch.device("meta"):
        model = stunet.create_model("stunet_small", depths=[1, 2, 3, 2, 1, 1], widths=[8, 16, 32, 64, 64, 64])
    assert [len(stage) for stage in model.conv_blocks_context] == [1, 2, 3, 2, 1, 1]
    assert [len(stage) for stage in model.conv_blocks_localization] == [1, 2, 3, 2, 1]


def test_deep_supervision_switch_used_by_nnunet():
    model = stunet.create_model("stunet_small", num_classes=2, strides=[2, 2], **TINY).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        outputs = model(x)
        model.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
        single = model(x)
    assert isinstance(outputs, list) and len(outputs) == 2
    assert [o.shape[-1] for o in outputs] == [8, 4]  # highest resolution first
    torch.testing.assert_close(single, outputs[0])


def test_indivisible_patch_names_axis_size_and_divisor():
    model = stunet.create_model("stunet_small", strides=[[2, 2, 2], [1, 2, 2]], **TINY)
    with pytest.raises(ValueError, match=r"size 10 along spatial axis 1 is not divisible by 4"):
        model(torch.randn(1, 1, 8, 10, 8))
    with pytest.raises(ValueError, match="expected 1 input channels, got 2"):
        model(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="single voxel at the coarsest stage"):
        model(torch.randn(1, 1, 2, 4, 4))  # total stride (2, 4, 4)


@pytest.mark.parametrize("bad, message", [
    (dict(depths=[1, 1]), "depths needs 3 entries"),
    (dict(strides=[2]), "strides needs 2 entries"),
    (dict(kernel_sizes=[[3, 3], [3, 3, 3], 3]), "mix 2D and 3D"),
    (dict(kernel_sizes=4), "must be odd"),
])
def test_inconsistent_configs_fail_clearly(bad, message):
    kwargs = dict(TINY, strides=[2, 2]) | bad
    with pytest.raises(ValueError, match=message):
        stunet.create_model("stunet_small", **kwargs)


def test_activation_checkpointing_gives_identical_loss_and_gradients():
    torch.manual_seed(0)
    model = stunet.create_model("stunet_small", num_classes=3, strides=[2, 2], **TINY)
    x = torch.randn(2, 1, 8, 8, 8)
    results = []
    for flag in (False, "stage", "block"):
        model.zero_grad()
        model.activation_checkpointing = flag
        loss = sum(o.square().mean() for o in model(x))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    for loss, grads in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=0, atol=0)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_activation_estimate_matches_real_saved_tensors():
    """The meta-device estimate counts what a real forward pass stores for backward (deduplicated by storage)."""
    model = stunet.create_model("stunet_small", num_classes=3, strides=[2, 2], **TINY)
    params = {p.data_ptr() for p in model.parameters()}
    stored = {}

    def pack(t):
        if t.data_ptr() not in params and t.is_floating_point():
            stored[t.data_ptr()] = max(stored.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(1, 1, 16, 16, 16))
    estimate = measure(model.config, (16, 16, 16)).activation_bytes
    assert estimate == pytest.approx(sum(stored.values()), rel=0.05)
    per_stage = measure(model.config, (16, 16, 16), activation_checkpointing="stage").activation_bytes
    per_block = measure(model.config, (16, 16, 16), activation_checkpointing="block").activation_bytes
    assert per_stage < estimate and per_block < estimate
