"""Scaling, dimensionality, registry and input checks of the STU-Net builders, and their 1×1 convolutions' fast path
(no reference material needed)."""
import copy
import warnings
from unittest import mock

import pytest
import torch

import stunet
from stunet.models.blocks import ResidualBlock, UpsampleConv
from stunet.models.complexity import measure

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


def _pointwise_convs(model):
    """A segmentation head, a residual block's strided 1×1 projection and an upsampling layer's 1×1 convolution."""
    projection = next(b.conv3 for b in model.modules() if isinstance(b, ResidualBlock) and b.conv3 is not None
                      and any(s != 1 for s in b.conv3.stride))
    upsample = next(m.conv for m in model.modules() if isinstance(m, UpsampleConv))
    return {"head": model.seg_outputs[-1], "projection": projection, "upsample": upsample}


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = stunet.create_model("stunet_small", num_classes=3, strides=[2, 2], **TINY).eval()
    return model, torch.randn(2, 1, 8, 8, 8)


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_fast_path_equals_the_convolution(dims):
    """Without hooks the 1×1 convolutions run as matrix products (not through the module) with conv(x)'s result."""
    from stunet.models.blocks import pointwise

    torch.manual_seed(0)
    conv_class = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    x = torch.randn(2, 6, *[7] * dims)
    for conv in (conv_class(6, 5, 1), conv_class(6, 5, 1, stride=2), conv_class(6, 5, 1, bias=False)):
        with mock.patch.object(conv_class, "_conv_forward", autospec=True, side_effect=conv_class._conv_forward) as spy:
            fast = pointwise(conv, x)
        assert spy.call_count == 0
        torch.testing.assert_close(fast, conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["head", "projection", "upsample"])
def test_pointwise_convs_run_their_forward_hooks(small_model, where):
    """A forward hook on a 1×1 convolution fires and its replacement output is used; removed, the fast path returns
    the same output as before."""
    model, x = small_model
    conv = _pointwise_convs(model)[where]
    with torch.no_grad():
        plain = model(x)[0]
        seen = []
        handle = conv.register_forward_hook(lambda m, i, out: seen.append(out.shape) or out * 0)
        hooked = model(x)[0]
        handle.remove()
        again = model(x)[0]
    assert len(seen) == 1
    assert not torch.allclose(hooked, plain)
    if where == "head":
        torch.testing.assert_close(hooked, torch.zeros_like(hooked), rtol=0, atol=0)
    torch.testing.assert_close(again, plain, rtol=0, atol=0)


def test_pointwise_convs_run_pre_hooks_and_global_hooks(small_model):
    """Forward pre-hooks (which may replace the input), and global module hooks, see every 1×1 convolution."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    model, x = small_model
    convs = _pointwise_convs(model)
    called = []
    handles = [register_module_forward_pre_hook(lambda m, i: called.append(m)),
               register_module_forward_hook(lambda m, i, o: called.append(m))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    for conv in convs.values():
        assert sum(m is conv for m in called) == 2
    head = convs["head"]
    handle = head.register_forward_pre_hook(lambda m, inputs: (torch.zeros_like(inputs[0]),))
    with torch.no_grad():
        out = model(x)[0]
    handle.remove()
    torch.testing.assert_close(out, head.bias.view(1, -1, 1, 1, 1).expand_as(out), rtol=0, atol=0)


@pytest.mark.parametrize("where", ["head", "projection", "upsample"])
def test_pointwise_convs_use_parametrized_weights(small_model, where):
    """A parametrization (torch.nn.utils.parametrize) of a 1×1 convolution's weight is applied in the forward pass,
    like writing the parametrized weight into the module; spectral norm's power iteration runs in training."""
    from torch.nn.utils import parametrizations, parametrize

    class Doubled(torch.nn.Module):
        calls = 0

        def forward(self, weight):
            Doubled.calls += 1
            return 2 * weight

    model, x = small_model
    reference = copy.deepcopy(model)
    with torch.no_grad():
        _pointwise_convs(reference)[where].weight.mul_(2)
        expected = reference(x)[0]
        conv = _pointwise_convs(model)[where]
        parametrize.register_parametrization(conv, "weight", Doubled())
        with mock.patch.object(torch.nn.Conv3d, "_conv_forward", autospec=True,
                               side_effect=torch.nn.Conv3d._conv_forward) as spy:
            out = model(x)[0]
    assert Doubled.calls >= 1 and any(call.args[0] is conv for call in spy.call_args_list)  # through the module
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    conv = _pointwise_convs(reference)[where]
    parametrizations.spectral_norm(conv)
    reference.train()
    before = conv.parametrizations.weight[0]._u.clone()
    reference(x)
    assert not torch.equal(conv.parametrizations.weight[0]._u, before)  # its power iteration ran


@pytest.mark.parametrize("where", ["head", "projection", "upsample"])
def test_pointwise_convs_follow_hook_based_weight_norm(small_model, where):
    """The deprecated torch.nn.utils.weight_norm recomputes the weight in a forward pre-hook: a changed magnitude
    (weight_g) takes effect in the next forward pass."""
    model, x = small_model
    reference = copy.deepcopy(model)
    with torch.no_grad():
        _pointwise_convs(reference)[where].weight.mul_(3)
        expected = reference(x)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            conv = torch.nn.utils.weight_norm(_pointwise_convs(model)[where])
        conv.weight_g.mul_(3)
        out = model(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
