"""Moving pretrained weights into networks for other tasks, and the fine-tuning regimes' parameter groups."""
import pytest
import torch

import stunet
from stunet.nnunet.finetune import PolyLRPerGroup, parameter_groups
from stunet.weights.pretrained import get_pretrained_config
from stunet.weights.transfer import IncompatibleWeightsError, transfer_weights

TINY = dict(depths=[1, 2, 1], widths=[4, 8, 8], strides=[2, 2])
TOTALSEG = get_pretrained_config("stunet_small.totalseg104").labels


def _tiny(seed, **kwargs):
    torch.manual_seed(seed)
    return stunet.create_model("stunet_small", **{**TINY, **kwargs}).eval()


def test_same_task_copies_everything():
    source, target = _tiny(0, num_classes=5), _tiny(1, num_classes=5)
    report = transfer_weights(target, source.state_dict())
    assert not report.reinitialised and not report.adapted
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize("channels", [2, 3])
def test_first_layer_adaptation_keeps_activations_for_repeated_input(channels):
    source = _tiny(0, num_classes=3)
    target = _tiny(1, num_classes=3, in_channels=channels)
    report = transfer_weights(target, source.state_dict())
    assert report.adapted == ["conv_blocks_context.0.0.conv1.weight", "conv_blocks_context.0.0.conv3.weight"]
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(target(x.repeat(1, channels, 1, 1, 1))[0], source(x)[0], rtol=1e-5, atol=1e-5)


def test_other_classes_reinitialise_the_heads_only():
    source, target = _tiny(0, num_classes=5), _tiny(1, num_classes=3)
    fresh_heads = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("seg_outputs.")}
    report = transfer_weights(target, source.state_dict())
    assert sorted(report.reinitialised) == sorted(fresh_heads)
    for key, value in target.state_dict().items():
        expected = fresh_heads[key] if key in fresh_heads else source.state_dict()[key]
        assert torch.equal(value, expected), key


def test_label_aware_heads_take_the_rows_of_matching_classes():
    source = _tiny(0, num_classes=105)
    target = _tiny(1, num_classes=5)
    fresh = target.state_dict()["seg_outputs.0.weight"].clone()
    target_labels = {0: "background", 1: "Liver", 2: "spleen", 3: "tumour", 4: "kidney"}
    report = transfer_weights(target, source.state_dict(), TOTALSEG, target_labels,
                              name_map={"kidney": ["kidney_left", "kidney_right"]})
    src = source.state_dict()
    liver, spleen, left, right = (next(i for i, n in TOTALSEG.items() if n == name)
                                  for name in ("liver", "spleen", "kidney_left", "kidney_right"))
    assert report.head_rows == {0: [0], 1: [liver], 2: [spleen], 4: [left, right]}
    for key in ("seg_outputs.0.weight", "seg_outputs.1.bias"):
        got = target.state_dict()[key]
        assert torch.equal(got[1], src[key][liver]) and torch.equal(got[2], src[key][spleen])
        torch.testing.assert_close(got[4], (src[key][left] + src[key][right]) / 2)
    assert torch.equal(target.state_dict()["seg_outputs.0.weight"][3], fresh[3])  # tumour: no pretrained class
    assert "Liver <- liver" in report.summary(target_labels, TOTALSEG)


def test_another_size_is_refused_with_both_names():
    with torch.device("meta"):
        small, large = stunet.create_model("stunet_small"), stunet.create_model("stunet_large")
    with pytest.raises(IncompatibleWeightsError, match="are stunet_small but the network is stunet_large"):
        transfer_weights(large, small.state_dict())


@pytest.mark.parametrize("trainable, changes", [
    ("decoder", lambda name: not name.startswith("conv_blocks_context.")),
    ("heads", lambda name: name.startswith("seg_outputs.")),
    ("all", lambda name: True),
])
def test_frozen_parameters_stay_unchanged_after_steps(trainable, changes):
    model = _tiny(0, num_classes=3).train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    groups = parameter_groups(model, 1e-2, trainable, body_lr_factor=0.1)
    optimizer = torch.optim.SGD(groups, 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scheduler = PolyLRPerGroup(optimizer, 1e-2, 10)
    for step in range(3):
        scheduler.step(step)
        loss = sum(o.square().mean() for o in model(torch.randn(2, 1, 8, 8, 8)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        assert (not torch.equal(parameter, before[name])) == changes(name), name
    if trainable != "heads":
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert lrs["body"] == pytest.approx(0.1 * lrs["heads"]) and lrs["heads"] < 1e-2  # poly decay per group
