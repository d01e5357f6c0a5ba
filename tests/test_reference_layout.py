"""The presets and the tiny published model must equal the reference material in ../shared exactly."""
import json
from math import prod

import pytest
import torch

import stunet
from stunet.models.complexity import measure
from stunet.models.config import STUNetConfig

PRESETS = ["small", "base", "large", "huge"]


@pytest.fixture(scope="module")
def layout(shared):
    return json.loads(shared("reference/stunet_official_layout.json").read_text())


@pytest.mark.parametrize("size", PRESETS)
def test_preset_state_dict_equals_published(layout, size):
    ref = layout[size]
    with torch.device("meta"):
        model = stunet.create_model(f"stunet_{size}", in_channels=1, num_classes=105)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == ref["state_dict"]  # names, shapes and registration order
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
    assert model.config == STUNetConfig.from_published(ref["config"])


@pytest.mark.parametrize("size", PRESETS)
def test_macs_equal_published_minus_the_cheaper_upsampling(layout, size):
    """Our 1x1 upsampling convolutions run before the nearest-neighbour interpolation: same result, fewer MACs."""
    ref = layout[size]
    cfg = STUNetConfig.from_published(ref["config"])
    saved, voxels = 0, 128 ** 3
    for s in range(cfg.n_stages - 1):  # upsampling from stage s+1 to stage s
        hi = voxels // prod(prod(st) for st in cfg.strides[:s])
        lo = hi // prod(cfg.strides[s])
        saved += cfg.widths[s + 1] * cfg.widths[s] * (hi - lo)
    assert measure(cfg, (128, 128, 128)).macs == ref["conv_macs_128cube"] - saved


def test_tiny_published_model_loads_strictly_and_matches_outputs(shared):
    ref = torch.load(shared("reference/stunet_official_parity_tiny.pt"), weights_only=True)
    model = stunet.STUNet(**vars(STUNetConfig.from_published(ref["config"]))).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        outputs = model(ref["input"])
        model.decoder.deep_supervision = False
        output = model(ref["input"])
    assert len(outputs) == len(ref["output_deep_supervision"])
    for ours, expected in zip(outputs, ref["output_deep_supervision"]):
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(output, ref["output"], rtol=0, atol=1e-4)
